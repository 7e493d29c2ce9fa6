"""Model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

An explanation that looks the same for a trained model and for the same architecture
with random weights explains the image (edges, contrast), not the model. The check
re-initialises the weights of a copy **cascading from the top**: stage 1 randomises the
output layer, stage 2 also the next layer with weights below it, and so on until every
layer is random (the last stage is the fully randomised model). At each stage it
compares the maps of the trained and randomised model for the same images and the same
target class (the trained model's top class) by

* Spearman rank correlation of the pixel values (scipy), and
* SSIM (Wang et al. 2004, Gaussian window sigma 1.5, data range 1).

A faithful method drops to low similarity after the first stages. ``mode="full"`` runs
only the last stage.

Re-initialisation uses each variable's own initializer (``kernel_initializer``,
``gamma_initializer``, ...), seeded, so the random model is what Keras would build
before training; a variable without one is shuffled instead (same values, random
places). Layers of a nested sub-model are re-initialised together, as one stage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
from scipy import ndimage, stats

from ml.explain._common import as_image, forward, quiet_retracing
from ml.explain.methods import METHODS, Heatmap, explain

log = logging.getLogger(__name__)


def _leaf_layers(layer: Any) -> list[Any]:
    children = getattr(layer, "layers", None)
    if children:
        return [leaf for child in children for leaf in _leaf_layers(child)]
    return [layer]


def _initializer_for(layer: Any, variable_name: str) -> Any:
    candidates = [f"{variable_name}_initializer"]
    if variable_name.endswith("_kernel"):
        candidates.append(f"{variable_name.removesuffix('_kernel')}_initializer")
    if variable_name == "kernel":
        candidates.append("depthwise_initializer")
    for attribute in candidates:
        initializer = getattr(layer, attribute, None)
        if initializer is not None:
            return keras.initializers.get(initializer)
    return None


def _reinitialise(layer: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for leaf_index, leaf in enumerate(_leaf_layers(layer)):
        for var_index, variable in enumerate(leaf.weights):
            initializer = _initializer_for(leaf, variable.name)
            if initializer is not None:
                config = initializer.get_config()
                if "seed" in config:
                    config["seed"] = int(seed * 1009 + leaf_index * 31 + var_index)
                    initializer = initializer.__class__.from_config(config)
                value = initializer(shape=tuple(variable.shape), dtype=variable.dtype)
            else:
                value = rng.permutation(np.asarray(variable).ravel()).reshape(variable.shape)
            variable.assign(value)


def weighted_layers(model: keras.Model) -> list[str]:
    """Top-level layers that own weights, from the output down (cascading order)."""
    return [layer.name for layer in reversed(model.layers) if layer.weights]


def randomised_copy(
    model: keras.Model, layer_names: Iterable[str], *, seed: int = 0
) -> keras.Model:
    """A copy of ``model`` with the named layers re-initialised, the rest trained."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for index, name in enumerate(layer_names):
        _reinitialise(clone.get_layer(name), seed + index)
    return clone


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps; 0.0 when either is constant (no ranking)."""
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(stats.spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean structural similarity of two maps (Wang et al. 2004, Gaussian window)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        blurred: np.ndarray = ndimage.gaussian_filter(x, sigma, truncate=3.5)
        return blurred

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    denominator = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(numerator / denominator))


def _stage(
    model: keras.Model,
    randomised: list[str],
    arrays: list[np.ndarray],
    targets: list[int],
    trained: list[Heatmap],
    method: str,
    seed: int,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Similarity of each trained map to the map of a copy with ``randomised`` re-initialised."""
    random_model = randomised_copy(model, randomised, seed=seed)
    rank_corr, structural = [], []
    for x, target, reference in zip(arrays, targets, trained, strict=True):
        other = explain(random_model, x, method, target_class=target, **params)
        rank_corr.append(spearman(reference.values, other.values))
        structural.append(ssim(reference.values, other.values))
    log.debug("%s randomised down to %s: %s", method, randomised[-1], rank_corr)
    return {
        "randomised": randomised,
        "spearman_mean": float(np.mean(rank_corr)),
        "ssim_mean": float(np.mean(structural)),
        "spearman": [round(v, 4) for v in rank_corr],
        "ssim": [round(v, 4) for v in structural],
    }


def randomisation_check(
    model: keras.Model,
    images: Sequence[np.ndarray],
    method: str = "gradcam",
    *,
    seed: int = 0,
    mode: str = "cascading",
    **params: Any,
) -> dict[str, Any]:
    """Similarity of trained vs randomised-model maps for ``method`` (lower is better).

    Returns ``spearman_mean`` and ``ssim_mean`` for the fully randomised model, and
    ``stages``: the same means after each cascading step (``randomised``: the layers
    random at that stage, top first). ``params`` go to :func:`ml.explain.explain`.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown explanation method {method!r}; choose from {METHODS}.")
    if mode not in ("cascading", "full"):
        raise ValueError("mode must be 'cascading' or 'full'")
    arrays = [as_image(model, image) for image in images]
    if not arrays:
        raise ValueError("randomisation_check needs at least one image")
    order = weighted_layers(model)
    if not order:
        raise ValueError(f"Model {model.name!r} has no weights to randomise.")
    targets = [int(np.argmax(p)) for p in forward(model, np.stack(arrays))]
    trained = [
        explain(model, x, method, target_class=t, **params)
        for x, t in zip(arrays, targets, strict=True)
    ]
    cuts = range(1, len(order) + 1) if mode == "cascading" else [len(order)]
    with quiet_retracing():
        stages = [
            _stage(model, order[:cut], arrays, targets, trained, method, seed, params)
            for cut in cuts
        ]
    final = stages[-1]
    return {
        "method": method,
        "mode": mode,
        "seed": seed,
        "n_images": len(arrays),
        "params": trained[0].params,
        "spearman_mean": final["spearman_mean"],
        "ssim_mean": final["ssim_mean"],
        "stages": [
            {
                "top_layer_randomised_down_to": stage["randomised"][-1],
                "n_layers_randomised": len(stage["randomised"]),
                "spearman_mean": stage["spearman_mean"],
                "ssim_mean": stage["ssim_mean"],
            }
            for stage in stages
        ],
        "per_image_final": {"spearman": final["spearman"], "ssim": final["ssim"]},
    }

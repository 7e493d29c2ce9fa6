"""Deletion / insertion faithfulness (Petsiuk et al. 2018, RISE).

A heatmap claims an order of importance over the pixels. *Deletion* replaces pixels
with ``baseline`` in that order and records the target probability; a faithful map makes
it fall fast (low AUC). *Insertion* starts from the baseline image and puts pixels back
in the same order; a faithful map makes it rise fast (high AUC). Both are only
meaningful relative to a reference: score a random map the same way
(:func:`random_heatmap`) and compare.

Caveat (Hooker et al. 2019): the partly deleted images are not images the model was
trained on, so a curve can measure the model's reaction to the deletion pattern as much
as the map. Compare maps against a random map of the same smoothness.

All ``2 * (steps + 1)`` images go through the model in one compiled call.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from ml.explain._common import as_image, forward, resize_map


def random_heatmap(
    shape: tuple[int, int], seed: int = 0, *, cells: int | None = None
) -> np.ndarray:
    """A random map: the chance-level reference for :func:`deletion_insertion`.

    ``cells=None`` ranks every pixel at random, so deletion scatters single black pixels
    over the image: an input unlike any training image, to which a model can react
    strongly (the bundled model calls such "salt and pepper" images COVID-19). ``cells=k``
    draws a k x k grid and upsamples it bilinearly, so whole regions go at once, as
    with a smooth map (Grad-CAM, occlusion): the fairer reference for those.
    """
    rng = np.random.default_rng(seed)
    if cells is None:
        return rng.random(shape).astype(np.float32)
    coarse = rng.random((int(cells), int(cells))).astype(np.float32)
    return resize_map(coarse, shape)


def deletion_insertion(
    model: keras.Model,
    image: np.ndarray,
    heatmap: np.ndarray,
    class_index: int,
    *,
    steps: int = 32,
    baseline: float = 0.0,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Deletion and insertion AUC of ``heatmap`` for ``class_index``.

    Pixels are ranked by heatmap value (ties keep raster order, so the result is
    deterministic); step k has removed (or inserted) round(k / steps * H * W) pixels,
    across all channels. AUC is the trapezoid over the fraction of pixels, in [0, 1] for
    probability outputs. ``baseline`` 0.0 is black, the value of the preprocessing's
    letterbox margins. Returns ``{"deletion_auc", "insertion_auc", "steps"}`` plus both
    curves (``deletion_curve``, ``insertion_curve``, ``fractions``) for plotting.
    """
    x = as_image(model, image)
    steps = int(steps)
    if steps < 1:
        raise ValueError("steps must be >= 1")
    values = np.asarray(heatmap, dtype=np.float64)
    height, width = x.shape[:2]
    if values.shape != (height, width):
        raise ValueError(f"Heatmap shape {values.shape} is not the image's {(height, width)}.")
    if not np.all(np.isfinite(values)):
        raise ValueError("Heatmap contains NaN or infinite values.")
    n_pixels = height * width
    order = np.argsort(-values.ravel(), kind="stable")
    rank = np.empty(n_pixels, dtype=np.int64)
    rank[order] = np.arange(n_pixels)
    counts = np.round(np.linspace(0, n_pixels, steps + 1)).astype(np.int64)
    changed = (rank[np.newaxis, :] < counts[:, np.newaxis]).reshape(steps + 1, height, width, 1)
    canvas = np.full_like(x, float(baseline))
    deletion = np.where(changed, canvas, x)
    insertion = np.where(changed, x, canvas)
    outputs = forward(model, np.concatenate([deletion, insertion]), batch_size=batch_size)
    scores = outputs[:, int(class_index)].astype(np.float64)
    fractions = counts / n_pixels
    deletion_curve, insertion_curve = scores[: steps + 1], scores[steps + 1 :]
    return {
        "deletion_auc": float(np.trapezoid(deletion_curve, fractions)),
        "insertion_auc": float(np.trapezoid(insertion_curve, fractions)),
        "steps": steps,
        "baseline": float(baseline),
        "fractions": [float(f) for f in fractions],
        "deletion_curve": [float(s) for s in deletion_curve],
        "insertion_curve": [float(s) for s in insertion_curve],
    }

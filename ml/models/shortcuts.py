"""Shortcut tests: does a classifier read the lungs, or where an image came from?

Why: in the pooled training data each source holds mostly one class (the paediatric
set has no COVID-19, NIH has no COVID-19, covid-chestxray is mostly COVID-19), so a
model can score well by recognising the hospital (markers, borders, exposure, age)
instead of the disease. These tests measure that, on the test split:

* **within-source discrimination** (:func:`within_source_auroc`): pneumonia vs normal
  among the NIH ChestX-ray14 images, COVID-19 vs the rest among covid-chestxray's. Within
  one source the hospital gives nothing away.
* **lungs blanked / lungs only** (:func:`blanked_predictions`): the lung fields (or
  everything else) filled with the image's mean. A model that reads the lungs falls
  towards chance without them.
* **Grad-CAM mass in the lungs** (:func:`gradcam_mass_in_lungs`): the share of the
  predicted class's Grad-CAM that lies inside the lung mask, mean per source.

Everything works on arrays in the *model's input frame*: ``x`` (N, S, S, C) float in
[0, 1], exactly what the model is fed, and ``masks`` (N, S, S) bool, the lung mask in
that same frame. :func:`shortcut_metrics` runs them all and returns a
:class:`~ml.models.metrics.ShortcutMetrics`.

TensorFlow is imported inside the functions that need a model (Grad-CAM), so this
module, like :mod:`ml.models.metrics`, can be imported without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from ml.lungs.masks import mass_in_mask
from ml.models.evaluation import BOOTSTRAP_METHOD, _bootstrap_intervals, percentile_intervals
from ml.models.metrics import (
    BootstrapInfo,
    Interval,
    MassInLungs,
    ShortcutMetrics,
    SourceProbe,
    WithinSourceAuroc,
)

log = logging.getLogger(__name__)

# The NIH ChestX-ray14 images: one hospital, normal and pneumonia. Older snapshots
# named the folders' sources separately.
NIH_SOURCES = ("nih-cxr14", "adult-normal", "adult-pneumonia")
COVID_CHESTXRAY_SOURCE = "covid-chestxray"

Predict = Callable[[np.ndarray], np.ndarray]
BlankMode = Literal["lungs", "outside"]


# --- within-source discrimination ------------------------------------------------------------


def _auroc_with_ci(
    is_positive: np.ndarray, scores: np.ndarray, *, n_bootstrap: int, seed: int
) -> tuple[float | None, tuple[float, float] | None]:
    """scikit-learn's ROC-AUC and a 95% percentile interval, resampling within each class.

    Resampling positives and negatives separately (stratified) keeps both sides in every
    resample, so the AUC is always defined and the interval reflects the sizes actually
    measured. None, None when either side is empty.
    """
    positives = np.flatnonzero(is_positive)
    negatives = np.flatnonzero(~is_positive)
    if len(positives) == 0 or len(negatives) == 0:
        return None, None
    auroc = float(roc_auc_score(is_positive, scores))
    if n_bootstrap == 0:
        return auroc, None
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    values = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        chosen = np.r_[
            rng.choice(positives, size=len(positives)),
            rng.choice(negatives, size=len(negatives)),
        ]
        values[b] = roc_auc_score(labels, scores[chosen])
    return auroc, percentile_intervals(values)[0]


def within_source_auroc(
    y_true: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    sources: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, WithinSourceAuroc | None]:
    """ROC-AUC of the disease within one source, where the hospital gives nothing away.

    Returns ``{"nih_pneumonia_auroc": ..., "covid_chestxray_covid19_auroc": ...}`` (the
    :class:`~ml.models.metrics.ShortcutMetrics` field names):

    * NIH (source ``nih-cxr14``, or the older ``adult-normal``/``adult-pneumonia``): the
      model's p(pneumonia) for pneumonia against normal images (other labels left out);
    * ``covid-chestxray``: p(covid19) for COVID-19 against every other image of the source.

    A value is None when the source has no test images; its ``auroc`` is None when one
    side is empty. Intervals: 95% percentile bootstrap, images resampled with replacement
    within each side (``n_bootstrap`` resamples, ``np.random.default_rng(seed)``).
    """
    class_list = list(classes)
    labels = np.asarray([str(label) for label in y_true], dtype=object)
    source_array = np.asarray([str(s) for s in sources], dtype=object)
    prob_array = np.asarray(probs, dtype=np.float64)
    if not (len(labels) == len(source_array) == len(prob_array)):
        raise ValueError(
            f"y_true ({len(labels)}), sources ({len(source_array)}) and probs "
            f"({len(prob_array)}) must have one entry per image"
        )
    if prob_array.ndim != 2 or prob_array.shape[1] != len(class_list):
        raise ValueError(f"probs has shape {prob_array.shape}, expected (n, {len(class_list)})")
    for needed in ("pneumonia", "normal", "covid19"):
        if needed not in class_list:
            raise ValueError(f"classes {class_list} lack {needed!r}")

    def measure(
        chosen: np.ndarray, positive: str, negative: str, source: str
    ) -> WithinSourceAuroc | None:
        if not chosen.any():
            return None
        is_positive = labels[chosen] == positive
        scores = prob_array[chosen, class_list.index(positive)]
        auroc, ci = _auroc_with_ci(is_positive, scores, n_bootstrap=n_bootstrap, seed=seed)
        return WithinSourceAuroc(
            source=source,
            positive=positive,
            negative=negative,
            auroc=auroc,
            ci=ci,
            n_positive=int(is_positive.sum()),
            n_negative=int((~is_positive).sum()),
        )

    in_nih = np.isin(source_array, NIH_SOURCES)
    nih_names = sorted(set(source_array[in_nih]))
    nih = measure(
        in_nih & np.isin(labels, ["pneumonia", "normal"]),
        "pneumonia",
        "normal",
        "+".join(nih_names) or NIH_SOURCES[0],
    )
    covid = measure(
        source_array == COVID_CHESTXRAY_SOURCE, "covid19", "rest", COVID_CHESTXRAY_SOURCE
    )
    return {"nih_pneumonia_auroc": nih, "covid_chestxray_covid19_auroc": covid}


# --- blanking ---------------------------------------------------------------------------------


def _check_frame(x: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(x, dtype=np.float32)
    lungs = np.asarray(masks)
    if images.ndim != 4:
        raise ValueError(f"x must be a batch (N, S, S, C) of model inputs; got {images.shape}")
    if lungs.dtype != bool:
        raise ValueError(f"masks must be bool lung masks; got dtype {lungs.dtype}")
    if lungs.shape != images.shape[:3]:
        raise ValueError(
            f"masks {lungs.shape} must be the lung masks in the input frame, one per image: "
            f"shape {images.shape[:3]}"
        )
    return images, lungs


def blank(x: np.ndarray, masks: np.ndarray, mode: BlankMode) -> np.ndarray:
    """Copies of ``x`` with the lungs (``"lungs"``) or all but the lungs (``"outside"``)
    filled with each image's mean (per channel, over the whole frame).

    Why the mean, not black: a black hole is itself a strong, unnatural cue; the image's
    own mean removes the content and keeps the brightness the model was trained on.
    """
    images, lungs = _check_frame(x, masks)
    if mode not in ("lungs", "outside"):
        raise ValueError(f"mode must be 'lungs' or 'outside', got {mode!r}")
    region = lungs if mode == "lungs" else ~lungs
    means = images.mean(axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
    return np.where(region[..., np.newaxis], means, images).astype(np.float32)


def _predict_batches(predict: Predict, x: np.ndarray, batch: int) -> np.ndarray:
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    parts = [np.asarray(predict(x[i : i + batch])) for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float64)


def blanked_predictions(
    predict: Predict,
    x: np.ndarray,
    masks: np.ndarray,
    mode: BlankMode,
    *,
    batch: int = 64,
) -> np.ndarray:
    """Probabilities (N, n_classes) of ``predict`` on :func:`blank` ed inputs, in batches.

    ``predict`` maps a batch of model inputs to probabilities (``Classifier.predict_array``,
    or a Keras model wrapped by :func:`model_predict`).
    """
    empty = int((~np.asarray(masks, dtype=bool).any(axis=(1, 2))).sum())
    if empty:
        log.warning("%d of %d lung masks are empty; those images are not blanked", empty, len(x))
    return _predict_batches(predict, blank(x, masks, mode), batch)


@dataclass(frozen=True)
class _Scores:
    accuracy: float
    accuracy_ci: Interval | None
    macro_f1: float
    macro_f1_ci: Interval | None


def _scores(
    true_idx: np.ndarray, probs: np.ndarray, n_classes: int, *, n_bootstrap: int, seed: int
) -> _Scores:
    """Accuracy and macro-F1 (over every class) of argmax predictions, with 95% intervals."""
    pred_idx = np.argmax(probs, axis=1)
    labels = list(range(n_classes))
    intervals = _bootstrap_intervals(true_idx, pred_idx, n_classes, n_bootstrap, seed)
    return _Scores(
        accuracy=float(accuracy_score(true_idx, pred_idx)),
        accuracy_ci=intervals["accuracy"] if intervals else None,
        macro_f1=float(
            f1_score(true_idx, pred_idx, labels=labels, average="macro", zero_division=0)
        ),
        macro_f1_ci=intervals["macro_f1"] if intervals else None,
    )


# --- Grad-CAM in the lungs --------------------------------------------------------------------


def gradcam_maps(
    model: Any, x: np.ndarray, *, batch: int = 32, layer: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of the predicted class for a batch: (maps (N, S, S) in [0, 1], predicted (N,)).

    The same map as ``ml.explain.methods.explain(model, image, "gradcam")`` (gradients of
    the class score at the last convolution, averaged per filter, weighted sum of the
    filters, ReLU, bilinear resize, min-max scaling), but many images per gradient call:
    one ``tf.GradientTape`` over a batch, differentiating the sum of each image's own
    class score, which gives each image its own gradients because the model runs in
    inference mode (no batch statistics).
    """
    import tensorflow as tf

    from ml.explain._common import cached_function, normalise_map, resize_map
    from ml.explain.methods import _expose, last_conv_layer

    images = np.asarray(x, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"x must be a batch (N, S, S, C) of model inputs; got {images.shape}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    layer = layer or last_conv_layer(model)
    path = layer.split("/")
    exposed = cached_function(model, ("gradcam-graph", layer), lambda ref: _expose(ref(), path))
    shape = images.shape[1:]

    def factory(model_ref: Any) -> Any:
        import keras

        inputs, layer_output, output = exposed
        grad_model = keras.Model(inputs, [layer_output, output])

        @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32)])  # type: ignore[untyped-decorator]  # TF is untyped
        def batched(batch_images: Any) -> Any:
            with tf.GradientTape() as tape:
                conv, predictions = grad_model(batch_images, training=False)
                target = tf.argmax(predictions, axis=1, output_type=tf.int32)
                score = tf.gather(predictions, target, axis=1, batch_dims=1)
            grads = tape.gradient(score, conv)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cams = tf.nn.relu(tf.reduce_sum(conv * weights, axis=-1))
            return cams, target

        return batched

    function = cached_function(model, ("gradcam-batched", layer, shape), factory)
    maps = np.empty(images.shape[:3], dtype=np.float32)
    predicted = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), batch):
        cams, target = function(tf.constant(images[start : start + batch]))
        predicted[start : start + batch] = target.numpy()
        for offset, cam in enumerate(cams.numpy()):
            maps[start + offset] = normalise_map(resize_map(cam, images.shape[1:3]))
    return maps, predicted


def gradcam_mass_in_lungs(
    model: Any,
    x: np.ndarray,
    masks: np.ndarray,
    sources: Sequence[str],
    *,
    batch: int = 32,
    layer: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, MassInLungs]:
    """Per source, the mean share of Grad-CAM mass (predicted class) inside the lungs.

    Images whose Grad-CAM is zero everywhere (nothing raised the class score) have no
    share to speak of: they are counted in ``n_empty`` and left out of the mean. The
    interval is a 95% percentile bootstrap of the mean over the source's images.
    """
    images, lungs = _check_frame(x, masks)
    source_array = np.asarray([str(s) for s in sources], dtype=object)
    if len(source_array) != len(images):
        raise ValueError(f"sources has {len(source_array)} entries but x has {len(images)}")
    maps, _ = gradcam_maps(model, images, batch=batch, layer=layer)
    has_mass = maps.reshape(len(maps), -1).max(axis=1) > 0
    shares = np.array(
        [
            mass_in_mask(heatmap, mask) if ok else np.nan
            for heatmap, mask, ok in zip(maps, lungs, has_mass, strict=True)
        ]
    )
    rng = np.random.default_rng(seed)
    result = {}
    for source in sorted(set(source_array)):
        chosen = source_array == source
        values = shares[chosen & has_mass]
        mean = float(values.mean()) if len(values) else None
        ci = None
        if len(values) and n_bootstrap:
            resampled = values[rng.integers(0, len(values), size=(n_bootstrap, len(values)))]
            ci = percentile_intervals(resampled.mean(axis=1))[0]
        result[source] = MassInLungs(
            mean=mean, ci=ci, n=len(values), n_empty=int((chosen & ~has_mass).sum())
        )
    return result


# --- all of them ------------------------------------------------------------------------------


def model_predict(model: Any) -> Predict:
    """A batch-to-probabilities function for a Keras model (one compiled call, inference)."""
    from ml.explain._common import forward

    return lambda batch: forward(model, batch)


def _resolve(model_or_predict: Any) -> tuple[Predict, Any]:
    """(predict function, Keras model or None) from a Classifier, a Keras model or a function."""
    if hasattr(model_or_predict, "predict_array") and hasattr(model_or_predict, "model"):
        return model_or_predict.predict_array, model_or_predict.model  # ml.serving Classifier
    if hasattr(model_or_predict, "inputs") and hasattr(model_or_predict, "outputs"):
        return model_predict(model_or_predict), model_or_predict  # a Keras model
    if callable(model_or_predict):
        return model_or_predict, None
    raise TypeError(
        "shortcut_metrics needs a Classifier, a Keras model or a predict function, "
        f"not {type(model_or_predict).__name__}"
    )


# --- source probe -----------------------------------------------------------------------------

POOLED_FEATURES = "gap"  # the global average pooling every lung-masked architecture ends with
PROBE_FOLDS = 5
PROBE_MIN_PER_SOURCE = 5


def pooled_features(model: Any, x: np.ndarray, batch: int = 32) -> np.ndarray | None:
    """The model's pooled features (layer ``gap``) for ``x``, or None without that layer."""
    import keras

    try:
        layer = model.get_layer(POOLED_FEATURES)
    except (ValueError, AttributeError):
        return None
    extractor = keras.Model(model.inputs, layer.output)
    return _predict_batches(lambda b: np.asarray(extractor(b, training=False)), x, batch)


def source_probe(
    features: np.ndarray,
    sources: Sequence[str],
    patients: Sequence[str] | None = None,
    *,
    among: str = "all",
    seed: int = 0,
) -> SourceProbe | None:
    """Cross-validated accuracy of a logistic regression predicting the source from the
    features (folds grouped by patient, so no patient is in train and test of a fold),
    with its Wilson interval and the chance level. None with fewer than two sources of
    at least ``PROBE_MIN_PER_SOURCE`` images. Why: a model whose features name the
    hospital can use the hospital; a probe near chance says they no longer do."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ml.ct.modality import wilson_interval

    source_array = np.asarray([str(s) for s in sources], dtype=object)
    counts = {s: int((source_array == s).sum()) for s in sorted(set(source_array))}
    kept = [s for s, n in counts.items() if n >= PROBE_MIN_PER_SOURCE]
    if len(kept) < 2:
        return None
    chosen = np.isin(source_array, kept)
    x = np.asarray(features, dtype=np.float64)[chosen]
    y = source_array[chosen]
    groups = (
        np.asarray(patients, dtype=object)[chosen]
        if patients is not None
        else np.arange(int(chosen.sum()))
    )
    folds = min(PROBE_FOLDS, min(int((y == s).sum()) for s in kept))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    predicted = cross_val_predict(
        probe, x, y, groups=groups, cv=StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    )
    hits = int((predicted == y).sum())
    return SourceProbe(
        among=among,
        accuracy=hits / len(y),
        ci=wilson_interval(hits, len(y)),
        chance=max(int((y == s).sum()) for s in kept) / len(y),
        n=len(y),
        sources=tuple(kept),
    )


def source_probes(
    model: Any,
    x: np.ndarray,
    labels: Sequence[str],
    sources: Sequence[str],
    patients: Sequence[str] | None,
    *,
    seed: int = 0,
) -> dict[str, SourceProbe]:
    """The probe on every image and on the normals only (where the class cannot explain
    the source), for a Keras model with pooled features; empty otherwise."""
    features = pooled_features(model, x) if model is not None else None
    if features is None:
        return {}
    out: dict[str, SourceProbe] = {}
    label_array = np.asarray([str(v) for v in labels], dtype=object)
    for among, chosen in (
        ("all", np.ones(len(label_array), bool)),
        ("normal", label_array == "normal"),
    ):
        probe = source_probe(
            features[chosen],
            [s for s, c in zip(sources, chosen, strict=True) if c],
            None if patients is None else [p for p, c in zip(patients, chosen, strict=True) if c],
            among=among,
            seed=seed,
        )
        if probe is not None:
            out[among] = probe
    return out


def shortcut_metrics(
    model_or_predict: Any,
    x: np.ndarray,
    masks: np.ndarray,
    y_true: Sequence[str],
    sources: Sequence[str],
    classes: Sequence[str],
    *,
    probs: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    batch: int = 32,
    gradcam: bool = True,
    patients: Sequence[str] | None = None,
) -> ShortcutMetrics:
    """Every shortcut test on one evaluation set, as a :class:`ShortcutMetrics`.

    ``model_or_predict``: an ``ml.serving.classifier.Classifier``, a Keras model, or a
    function from a batch of inputs to probabilities (then Grad-CAM is not measured).
    ``x`` (N, S, S, C) are the model inputs, ``masks`` (N, S, S) bool the lung masks in
    the same frame, ``y_true``/``sources`` one per image. ``probs``: the model's
    probabilities on ``x`` when the caller already has them (else predicted here).
    ``gradcam=False`` skips the Grad-CAM test (the slowest: one gradient per image).
    ``patients`` (one per image) group the source probe's folds; without them each
    image is its own group.
    """
    images, lungs = _check_frame(x, masks)
    class_list = list(classes)
    index = {name: i for i, name in enumerate(class_list)}
    labels = [str(label) for label in y_true]
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        raise ValueError(f"labels not in classes {class_list}: {unknown}")
    if not (len(labels) == len(sources) == len(images)):
        raise ValueError(
            f"y_true ({len(labels)}), sources ({len(sources)}) and x ({len(images)}) "
            "must have one entry per image"
        )
    if not labels:
        raise ValueError("nothing to evaluate: no images")
    predict, model = _resolve(model_or_predict)
    if probs is None:
        probs = _predict_batches(predict, images, batch)
    true_idx = np.array([index[label] for label in labels], dtype=np.int64)

    within = within_source_auroc(
        labels, probs, class_list, sources, n_bootstrap=n_bootstrap, seed=seed
    )
    modes: tuple[BlankMode, BlankMode] = ("lungs", "outside")
    lungs_blanked, lungs_only = (
        _scores(
            true_idx,
            blanked_predictions(predict, images, lungs, mode, batch=batch),
            len(class_list),
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        for mode in modes
    )
    mass: Mapping[str, MassInLungs] = {}
    if gradcam and model is not None:
        mass = gradcam_mass_in_lungs(
            model, images, lungs, sources, batch=batch, n_bootstrap=n_bootstrap, seed=seed
        )
    elif gradcam:
        log.info("Grad-CAM mass in the lungs not measured: a predict function has no layers")
    result = ShortcutMetrics(
        n=len(labels),
        nih_pneumonia_auroc=within["nih_pneumonia_auroc"],
        covid_chestxray_covid19_auroc=within["covid_chestxray_covid19_auroc"],
        lungs_blanked_accuracy=lungs_blanked.accuracy,
        lungs_blanked_accuracy_ci=lungs_blanked.accuracy_ci,
        lungs_blanked_macro_f1=lungs_blanked.macro_f1,
        lungs_blanked_macro_f1_ci=lungs_blanked.macro_f1_ci,
        lungs_only_accuracy=lungs_only.accuracy,
        lungs_only_accuracy_ci=lungs_only.accuracy_ci,
        lungs_only_macro_f1=lungs_only.macro_f1,
        lungs_only_macro_f1_ci=lungs_only.macro_f1_ci,
        chance_accuracy=float(np.bincount(true_idx).max() / len(true_idx)),
        gradcam_mass_in_lungs=mass,
        bootstrap=BootstrapInfo(n=n_bootstrap, seed=seed, method=BOOTSTRAP_METHOD),
        source_probe=source_probes(model, images, labels, sources, patients, seed=seed),
    )
    log.info(
        "Shortcut tests on %d images: lungs-blanked accuracy %.3f (chance %.3f), "
        "lowest mass in lungs %s",
        result.n,
        result.lungs_blanked_accuracy,
        result.chance_accuracy,
        "n/a" if result.min_mass_in_lungs is None else f"{result.min_mass_in_lungs:.3f}",
    )
    return result

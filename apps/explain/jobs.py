"""Run one explanation job (worker code: imports ml and TensorFlow lazily)."""

from __future__ import annotations

import functools
import logging
import time
from importlib import metadata

import numpy as np

from apps.cases.models import newest_result
from apps.explain.models import Explanation
from cxrplatform.jobs import JobResult, JobRunner

log = logging.getLogger(__name__)


@functools.cache
def explainer_version() -> str:
    """What computed an explanation, recorded with it: the platform release whose
    ``ml.explain`` code ran and the libraries under it (tf-explain draws Grad-CAM and
    occlusion; TensorFlow takes every gradient)."""
    parts = []
    for name in ("cxrplatform", "tf-explain", "tensorflow", "keras"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return "; ".join(parts)


class ExplanationRunner(JobRunner[Explanation]):
    """Compute, score and store one heatmap: of the classifier's served class for an
    X-ray, of the CT segmenter's infection output for a CT slice."""

    what = "The explanation"
    related = ("image__case", "model_version")

    def compute(self, explanation: Explanation) -> JobResult:
        # The image's study kind names its step (apps.cases.kinds): one of those below.
        return explanation.image.case.kind.explanation(explanation)


def _result(values, overlay: bytes, **fields: object) -> JobResult:
    """The map (float32 ``.npy``) and its overlay PNG, stored with the fields."""
    from ml.explain.api import heatmap_to_npy

    return JobResult(
        fields={**fields, "explainer_version": explainer_version()},
        files={
            "heatmap": ("map.npy", heatmap_to_npy(values)),
            "overlay": ("overlay.png", overlay),
        },
    )


def xray_explanation(explanation: Explanation) -> JobResult:
    """A heatmap of the classifier's served class for an X-ray, by the asked method, with
    its deletion/insertion scores and its mass inside the lungs."""
    from apps.cases.lungs import classifier_input
    from apps.models.serving import classifier_for
    from ml.data.preprocess import open_image
    from ml.explain.api import deletion_insertion, explain, render_overlay

    start = time.perf_counter()
    classifier = classifier_for(explanation.model_version)
    with explanation.image.file.open("rb") as fh:
        prepared = classifier_input(classifier, open_image(fh), explanation.image)
    array = prepared.x
    # At a chosen operating point the served label is the shifted argmax, not the
    # Keras model's own: explain that class.
    target = (
        int(np.argmax(classifier.predict_array(array[np.newaxis])[0]))
        if classifier.offsets
        else None
    )
    heatmap = explain(
        classifier.model,
        array,
        explanation.method,
        target_class=target,
        classes=classifier.classes,
        visible=prepared.visible,  # blanked outside the lungs: occlusion patches too
    )
    values, not_seen = seen_only(heatmap.values, prepared.visible, explanation.method)
    scores = deletion_insertion(classifier.model, array, values, heatmap.target_class)
    # On what the model can see: occlusion's map is zero on the blank it never saw.
    in_lungs = _mass_in_lungs(values, prepared.lung_mask)
    overlay = render_overlay(
        array[..., 0],
        values,
        title=f"{explanation.get_method_display()}: {heatmap.target_label}",
        not_seen=not_seen,
    )
    params = {**heatmap.params, "explain_seconds": round(heatmap.seconds, 4)}
    if not_seen is not None:
        params["not_seen_fraction"] = round(float(not_seen.mean()), 4)
    return _result(
        values,
        overlay,
        params=params,
        target_class=heatmap.target_class,
        target_label=heatmap.target_label or "",
        layer=heatmap.layer or "",
        scores={**scores, "mass_in_lungs": in_lungs},
        seconds=time.perf_counter() - start,
        mass_in_lungs=in_lungs,
    )


def seen_only(
    values: np.ndarray, visible: np.ndarray | None, method: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Occlusion's map with no importance on what the model was never shown (the blank
    outside the lungs of a model fed masked images; its patches fill only what it sees),
    and the mask of that blank (None when the model sees the whole image, or for other
    methods, whose maps are read on the whole input)."""
    if visible is None or method != "occlusion":
        return values, None
    seen = np.asarray(visible, dtype=bool)
    if seen.shape != values.shape[:2] or seen.all():
        return values, None
    return np.where(seen, values, 0.0).astype(np.float32), ~seen


def ct_explanation(explanation: Explanation) -> JobResult:
    """Grad-CAM of the CT segmenter's infection output for one slice.

    The map is at the slice's size, in [0, 1]; no deletion/insertion scores (they
    perturb a classifier's input and read its class probability, which a segmenter
    has not), and its mass inside the slice's lung mask instead.
    """
    from apps.cases.segmentation import read_slice
    from apps.models.serving import segmenter_for
    from ml.explain.api import render_overlay

    start = time.perf_counter()
    segmenter = segmenter_for(explanation.model_version)
    segmentation = newest_result(
        explanation.image.segmentations.filter(model_version=explanation.model_version)
    )
    gray = read_slice(segmentation) if segmentation is not None else None
    if gray is None:
        raise ValueError("The slice has no finished segmentation by this model.")
    values = np.clip(np.asarray(segmenter.infection_gradcam(gray), dtype=np.float32), 0.0, 1.0)
    in_lungs = _ct_mass_in_lungs(values, segmentation)
    overlay = render_overlay(
        gray.astype(np.float32) / 255.0, values, title="Grad-CAM: infection (CT)"
    )
    seconds = time.perf_counter() - start
    return _result(
        values,
        overlay,
        params={"output": "infection", "explain_seconds": round(seconds, 4)},
        target_class=0,
        target_label="infection",
        layer="",
        scores={"mass_in_lungs": in_lungs},
        seconds=seconds,
        mass_in_lungs=in_lungs,
    )


def _ct_mass_in_lungs(values, segmentation) -> float | None:
    """Share of the map's positive mass inside the slice's stored lung mask (None when
    no lungs were found)."""
    import io

    from PIL import Image

    from ml.lungs.masks import mass_in_mask

    if not segmentation.lungs_found or not segmentation.lung_mask:
        return None
    with segmentation.lung_mask.open("rb") as fh, Image.open(io.BytesIO(fh.read())) as png:
        mask = np.asarray(png.convert("L")) > 127
    return round(mass_in_mask(values, mask), 4)


def _mass_in_lungs(values, frame_mask) -> float | None:
    """Share of the map's positive mass inside the lung mask (both in the model's
    frame), in [0, 1]; None when the image has no lung mask."""
    from ml.lungs.masks import mass_in_mask

    if frame_mask is None:
        return None
    return round(mass_in_mask(values, frame_mask), 4)

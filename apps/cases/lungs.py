"""Lung fields of uploaded images: segmented by the worker, read by explanations and views.

The segmenter (``ml.lungs.segmenter``, TensorFlow) is loaded once per worker
process, like the classifier, and only inside worker functions: this module is
imported by the web process too (for :func:`lung_mask_of` and
:func:`mass_in_lungs`, which are NumPy only).

Segmentation must never fail a prediction: :func:`segment_lungs` turns every
error into a recorded message and the classification goes on.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.base import ContentFile
from PIL import Image

if TYPE_CHECKING:
    from apps.cases.models import CaseImage, Prediction
    from cxrplatform.files import StoredFiles
    from ml.lungs.segmenter import LungSegmenter

log = logging.getLogger(__name__)

SEGMENTATION_OFF = "Lung segmentation is turned off on this platform (CXR_LUNG_MODEL)."

_lock = threading.Lock()
_segmenters: dict[str, LungSegmenter] = {}


def segmenter() -> LungSegmenter | None:
    """The lung segmenter named by CXR_LUNG_MODEL, loaded once per process; None when off.

    The model card's sha256, when it records one, is checked on load, so a
    replaced or corrupted file is refused rather than used.
    """
    path = settings.CXR_LUNG_MODEL
    if path is None:
        return None
    key = str(path)
    with _lock:
        if key not in _segmenters:
            from ml.lungs.segmenter import LungSegmenter
            from ml.models.artifacts import read_card

            expected = read_card(path).get("sha256")
            log.info("loading the lung segmenter %s", path)
            _segmenters[key] = LungSegmenter.load(Path(path), expected_sha256=expected)
        return _segmenters[key]


def warm_up() -> None:
    """Load the segmenter now (worker start); failures are logged, not fatal."""
    try:
        segmenter()
    except Exception:
        log.exception("could not load the lung segmenter; predictions will record why")


@dataclass(frozen=True)
class LungFields:
    """What a prediction stores about its image's lungs."""

    found: bool | None  # None: segmentation did not run or failed
    message: str
    version: str = ""
    bbox: tuple[int, int, int, int] | None = None
    area_fraction: float | None = None
    mask_png: bytes = b""
    outline_png: bytes = b""

    def store(self, prediction: Prediction, stored: StoredFiles) -> dict[str, object]:
        """Write the mask and outline files; the field values for ``Prediction.mark_done``.

        Every file written is added to ``stored``, so a rollback removes it.
        """
        fields: dict[str, object] = {
            "lungs_found": self.found,
            "lung_message": self.message,
            "segmenter_version": self.version,
            "lung_bbox": list(self.bbox) if self.bbox is not None else None,
            "lung_area_fraction": self.area_fraction,
            "lung_mask": "",
            "lung_outline": "",
        }
        for name, content in (("lung_mask", self.mask_png), ("lung_outline", self.outline_png)):
            if not content:
                continue
            field = getattr(prediction, name)
            saved = field.storage.save(
                field.field.generate_filename(prediction, f"{name}.png"), ContentFile(content)
            )
            stored.add(saved)
            fields[name] = saved
        return fields


def segment_lungs(image: Image.Image) -> LungFields:
    """The lung fields of an image. Never raises for a segmentation problem.

    No plausible pair of lung fields is an answer (``found`` False, the
    segmenter's message); a missing model or an error in it is recorded as a
    message with ``found`` None. Only a task's soft time limit propagates.
    """
    try:
        model = segmenter()
        if model is None:
            return LungFields(found=None, message=SEGMENTATION_OFF)
        result = model.segment(image)
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        log.exception("lung segmentation failed")
        return LungFields(
            found=None,
            message=f"Lung segmentation failed ({type(exc).__name__}: {exc}).",
            version=getattr(_segmenters.get(str(settings.CXR_LUNG_MODEL)), "version", ""),
        )
    if not result.found:
        # No mask is kept for an implausible result: nothing downstream should
        # treat it as the lungs.
        return LungFields(
            found=False,
            message=result.message,
            version=result.version,
            area_fraction=result.area_fraction,
        )
    return LungFields(
        found=True,
        message="",
        version=result.version,
        bbox=result.bbox,
        area_fraction=result.area_fraction,
        mask_png=result.mask_png(),
        outline_png=result.outline_png(),
    )


# -- reading stored masks (NumPy only: web process and explanation jobs) -------------


def lung_prediction(image: CaseImage) -> Prediction | None:
    """The newest finished prediction of ``image`` if it has a lung mask, else None.

    The newest result speaks for the image: an older prediction's mask is not
    shown beside a newer one that found no lungs.
    """
    prediction = image.predictions.filter(status="done").order_by("-pk").first()
    if prediction is None or not prediction.lungs_found or not prediction.lung_mask:
        return None
    return prediction


def lung_mask_of(image: CaseImage) -> np.ndarray | None:
    """The image's lung mask (bool, image resolution), or None when it has none."""
    prediction = lung_prediction(image)
    if prediction is None:
        return None
    try:
        with prediction.lung_mask.open("rb") as fh, Image.open(io.BytesIO(fh.read())) as png:
            return np.asarray(png.convert("L")) > 127
    except (FileNotFoundError, OSError, ValueError):
        log.warning("the lung mask of prediction %s cannot be read", prediction.pk, exc_info=True)
        return None


def mass_in_lungs(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of a heatmap's positive mass inside the lung mask, in [0, 1].

    The heatmap lives in the model's input frame (the image letterboxed to a
    square, ``ml.data.preprocess.preprocess``); the mask is at the image's
    resolution, so it is letterboxed the same way before the two are compared.
    """
    from ml.lungs.masks import letterbox, mass_in_mask

    values = np.asarray(heatmap, dtype=np.float32)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"Expected a square 2-D heatmap, got shape {values.shape}.")
    framed, _ = letterbox(np.asarray(mask, dtype=np.float32), values.shape[0])
    return mass_in_mask(values, framed >= 0.5)

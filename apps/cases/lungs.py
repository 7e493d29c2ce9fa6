"""Lung fields of uploaded images: segmented by the worker, read by explanations and views.

The segmenter (``ml.lungs.segmenter``) is the production lung segmentation version of
the model registry, else the file ``CXR_LUNG_MODEL`` names; it is loaded once per worker
process into the worker's one model cache (``apps.models.serving``), and only inside
worker functions: this module is imported by the web process too (for
:func:`stored_lungs`, which is NumPy only). The inference worker runs it on
``CXR_INFERENCE_RUNTIME`` (LiteRT by default: no TensorFlow in that process; Keras when
the version or file has no ``.tflite``).

Segmentation must never fail a prediction: :func:`segment_lungs` turns every
error into a recorded message and the classification goes on.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from cxrplatform.files import store_file

if TYPE_CHECKING:
    from django.core.files.storage import Storage

    from apps.cases.models import CaseImage, Prediction
    from cxrplatform.files import StoredFiles
    from ml.data.preprocess import Prepared
    from ml.lungs.segmenter import LungSegmenter

log = logging.getLogger(__name__)

SEGMENTATION_OFF = "Lung segmentation is turned off on this platform (CXR_LUNG_MODEL)."


def segmenter(runtime: str | None = None) -> LungSegmenter | None:
    """The lung segmenter that serves (``apps.models.serving.lung_segmenter``: the
    production lung segmentation version, else CXR_LUNG_MODEL's file), loaded once per
    process; None when CXR_LUNG_MODEL turns segmentation off.

    ``runtime``: "litert" or "keras" (default ``CXR_INFERENCE_RUNTIME``). The sha256 the
    registry or the card records is checked on load (for LiteRT: the ``.tflite`` must
    have been converted from exactly that Keras file), so a replaced or corrupted file
    is refused rather than used.
    """
    from apps.models.serving import lung_segmenter

    return lung_segmenter(runtime)


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
    # The segmenter's LungResult, for a classifier that preprocesses with the same
    # segmenter (preprocessing v2) so it need not segment the image again; not stored.
    result: Any = field(default=None, compare=False, repr=False)

    def store(self, prediction: Prediction, stored: StoredFiles) -> dict[str, object]:
        """Write the mask and outline files; the field values for ``Prediction.mark_done``.

        Every file written is added to ``stored``, so a rollback removes it. A
        storage error is recorded like a segmentation error (no mask, ``found``
        None, the reason in the message): it does not fail the prediction.
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
        written: list[tuple[Storage, str]] = []
        try:
            for name, content in (
                ("lung_mask", self.mask_png),
                ("lung_outline", self.outline_png),
            ):
                if not content:
                    continue
                saved = store_file(prediction, name, f"{name}.png", content, stored)
                written.append((getattr(prediction, name).storage, saved))
                fields[name] = saved
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:
            log.exception("the lung mask of prediction %s could not be stored", prediction.pk)
            for storage, saved in written:
                storage.delete(saved)
            fields.update(
                lungs_found=None,
                lung_mask="",
                lung_outline="",
                lung_message=f"The lung mask could not be stored ({type(exc).__name__}: {exc}).",
            )
        return fields


def segment_lungs(image: Image.Image) -> LungFields:
    """The lung fields of an image. Never raises for a segmentation problem.

    No plausible pair of lung fields is an answer (``found`` False, the
    segmenter's message); a missing model or an error in it is recorded as a
    message with ``found`` None. Only a task's soft time limit propagates.
    """
    model = None
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
            version=model.version if model is not None else "",
        )
    if not result.found:
        # No mask is kept for an implausible result: nothing downstream should
        # treat it as the lungs.
        return LungFields(
            found=False,
            message=result.message,
            version=result.version,
            area_fraction=result.area_fraction,
            result=result,
        )
    return LungFields(
        found=True,
        message="",
        version=result.version,
        bbox=result.bbox,
        area_fraction=result.area_fraction,
        mask_png=result.mask_png(),
        outline_png=result.outline_png(),
        result=result,
    )


def same_segmenter(classifier: Any, version: str) -> bool:
    """Whether lungs segmented by ``version`` ("lung-unet@<sha256 prefix>") are the ones
    a preprocessing-v2 classifier's card asks for (its ``preprocessing.segmenter``)."""
    return bool(classifier.uses_lungs_of(version))


def lungs_for_classifier(classifier: Any, lungs: Any) -> Any:
    """``lungs`` (a LungResult or :class:`StoredLungs`) if the classifier may reuse them,
    else None: a v1 model needs none, a v2 model then segments with its own segmenter."""
    if lungs is None or not classifier.needs_lungs:
        return None
    return lungs if same_segmenter(classifier, lungs.version) else None


def classifier_input(
    classifier: Any, image: Image.Image, case_image: CaseImage | None = None
) -> Prepared:
    """A classifier's input for one image exactly as its prediction made it
    (``Classifier.prepare``, a ``ml.data.preprocess.Prepared``), for the runners that
    feed the model again (explanations, the model inspector).

    A case image's stored lung mask is reused when the classifier may use it (any v1
    model, carried into its frame; a v2 model preprocessed with the same segmenter); a
    v2 model otherwise segments the image with its own segmenter, as its predictions do.
    """
    lungs = stored_lungs(case_image) if case_image is not None else None
    prepared, _, _ = classifier.prepare(image, lungs)
    return prepared


# -- reading stored masks (NumPy only: web process and explanation jobs) -------------


def lung_prediction(image: CaseImage) -> Prediction | None:
    """The prediction that speaks for ``image`` (``newest_result``, the one the case page
    shows) if it has a lung mask, else None.

    An older prediction's mask is not shown beside a newer result that found no lungs.
    """
    from apps.cases.models import newest_result

    prediction = newest_result(image.predictions.all())
    if prediction is None or not prediction.lungs_found or not prediction.lung_mask:
        return None
    return prediction


@dataclass(frozen=True)
class StoredLungs:
    """A stored lung mask, shaped like the segmenter's LungResult where a classifier
    reads one (``mask``, ``found``, ``version``)."""

    mask: np.ndarray  # bool (H, W), the image's resolution
    version: str
    found: bool = True


def stored_lungs(image: CaseImage) -> StoredLungs | None:
    """The image's stored lung mask, or None when it has none (or it cannot be read)."""
    prediction = lung_prediction(image)
    if prediction is None:
        return None
    try:
        with prediction.lung_mask.open("rb") as fh, Image.open(io.BytesIO(fh.read())) as png:
            mask = np.asarray(png.convert("L")) > 127
    except (FileNotFoundError, OSError, ValueError):
        log.warning("the lung mask of prediction %s cannot be read", prediction.pk, exc_info=True)
        return None
    return StoredLungs(mask=mask, version=prediction.segmenter_version)

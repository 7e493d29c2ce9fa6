"""Run one CT segmentation job (worker code: imports ml and TensorFlow lazily).

A CT slice's masks (lungs, ground-glass opacity, consolidation, their union the
infection, the lung outline) are written as 8-bit PNGs at the slice's size and its
figures on the row: lung and lesion areas in pixels, the share of the lung
affected (in total and per class), the model version and the time it took. A
slice with no lung tissue (an abdomen slice) is a finished job with
``lungs_found`` False and the segmenter's message, not a failure: there is
nothing to measure, and the page says so.
"""

from __future__ import annotations

import io
import logging
import time

import numpy as np
from PIL import Image

from apps.cases.models import CT_MASK_FIELDS, Segmentation
from apps.models.models import ModelVersion
from cxrplatform.jobs import JobResult, JobRunner

log = logging.getLogger(__name__)

# The colours of the mask layers (RGB), one place for the viewer's layers and legend.
LAYER_COLOURS = {
    "lungs": (0, 200, 255),
    "lung_outline": (0, 200, 255),
    "ggo": (255, 214, 0),
    "consolidation": (230, 40, 40),
    "infection": (255, 120, 0),
}


class NoProductionSegmenterError(RuntimeError):
    pass


class UnreadableImageError(RuntimeError):
    """The stored slice is missing or corrupt: the job fails with this message."""


def layer_png(mask_bytes: bytes, kind: str) -> bytes:
    """A stored 8-bit mask as a coloured RGBA layer (the viewer's): the kind's colour
    where the mask is set, transparent elsewhere."""
    with Image.open(io.BytesIO(mask_bytes)) as png:
        mask = np.asarray(png.convert("L")) > 127
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[mask] = (*LAYER_COLOURS[kind], 255)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def read_slice(segmentation: Segmentation) -> np.ndarray:
    """The stored slice (an 8-bit PNG of its pixels, as the viewer shows it) as uint8."""
    from ml.data.preprocess import open_image

    try:
        with segmentation.image.file.open("rb") as fh:
            data = fh.read()
        with open_image(io.BytesIO(data)) as image:
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(
            f"The stored slice could not be read ({type(exc).__name__}: {exc})."
        ) from exc


def _percent(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


class SegmentationRunner(JobRunner[Segmentation]):
    """Segment the CT slice of one Segmentation with the production CT segmenter and store
    its masks and figures; the slice's Grad-CAM is queued with them."""

    what = "Segmentation"
    related = ("image__case",)

    def compute(self, segmentation: Segmentation) -> JobResult:
        from apps.models.serving import segmenter_for

        task = segmentation.image.case.kind.task  # the study kind's model (apps.cases.kinds)
        version = ModelVersion.objects.production(task=task)
        if version is None:
            raise NoProductionSegmenterError(
                "No production CT segmentation model is registered; a model admin must "
                "register and promote one (manage.py register_model --bundled --task "
                f"{task} --promote)."
            )
        segmenter = segmenter_for(version)
        gray = read_slice(segmentation)
        start = time.perf_counter()
        result = segmenter.segment(gray)
        inference_ms = (time.perf_counter() - start) * 1000.0
        log.info(
            "segmentation %s: lungs %s, %s%% affected, %.0f ms",
            segmentation.pk,
            "found" if result.lungs_found else "not found",
            result.percent_affected,
            inference_ms,
        )
        return JobResult(
            fields={
                "model_version_id": version.pk,
                "segmenter_version": str(segmenter.version)[:100],
                "lungs_found": bool(result.lungs_found),
                "message": result.message or "",
                "lung_area": int(result.lung_area),
                "infection_area": int(result.infection_area),
                "ggo_area": int(result.ggo_area),
                "consolidation_area": int(result.consolidation_area),
                "percent_affected": _percent(result.percent_affected),
                "percent_ggo": _percent(result.percent_ggo),
                "percent_consolidation": _percent(result.percent_consolidation),
                "max_infection_probability": round(float(np.max(result.infection_probability)), 4),
                "inference_ms": round(inference_ms, 2),
            },
            files={
                field: (f"{kind}.png", result.mask_png(kind))
                for kind, field in CT_MASK_FIELDS.items()
            },
        )

    def on_done(self, segmentation: Segmentation) -> None:
        # The explanation tab: Grad-CAM of the infection output, queued once this
        # commits (on the explain queue, like every prediction's).
        from apps.explain.services import AUTOMATIC_METHOD, request_explanation

        request_explanation(image=segmentation.image, method=AUTOMATIC_METHOD)

"""Serving: segment the lung fields of one chest X-ray with the bundled U-Net.

The image is letterboxed to the model's square input exactly as the classifier's
preprocessing does (:func:`ml.lungs.masks.letterbox`), the U-Net gives a lung
probability per input pixel, :func:`ml.lungs.masks.postprocess` keeps the two largest
regions and fills their holes, and the cleaned probability map is resampled back to
the original resolution (bilinear, then the threshold), so the outline follows the
probabilities rather than the 128-pixel grid (lungs joined into one region are
retried at higher thresholds first). :func:`ml.lungs.masks.plausibility`
decides whether the result looks like a pair of lung fields; when it does not, the
result says so (``found`` is False, ``message`` says why) instead of raising: a blank,
inverted, cropped or rotated film is an answer, not a crash.

Workers keep one ``LungSegmenter`` per process; calls go through a ``tf.function``
with a fixed input signature (``model.predict`` costs a data pipeline per call), or,
loaded with :meth:`LungSegmenter.load_lite`, through the LiteRT interpreter without
importing TensorFlow (``ml.serving.runtime``). A segmenter is a served model
(``ml.serving.protocol.ServedModel``): ``prepare`` letterboxes, ``run`` gives the
probabilities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ml.data.preprocess import to_unit_gray
from ml.lungs import masks
from ml.models.artifacts import ArtifactIntegrityError, read_card, sha256_file
from ml.serving.runtime import KerasRunner, LiteRunner, lite_path_for, load_lite_runner

log = logging.getLogger(__name__)

LUNGS_NOT_FOUND = "lung fields not found: is this a frontal chest X-ray?"
# Tried in turn when the lungs come out as one region (see segment_gray).
SPLIT_THRESHOLDS = (0.7, 0.85)
BUNDLED_LUNG_MODEL = Path(__file__).resolve().parent.parent / "bundled" / "lung-unet.keras"


@dataclass(frozen=True)
class LungResult:
    mask: np.ndarray  # bool (H, W) at the original image resolution
    bbox: (
        tuple[int, int, int, int] | None
    )  # (top, left, bottom, right), exclusive; None if not found
    area_fraction: float  # lung pixels / image pixels
    found: bool  # a plausible pair of lung fields
    message: str  # "" when found, else LUNGS_NOT_FOUND + " (reason)"
    version: str  # "lung-unet@" + first 12 hex digits of the artifact's sha256

    def outline_png(self) -> bytes:
        """RGBA PNG, transparent except the lung contour (1-2 px), same size as the mask."""
        return masks.outline_png(self.mask)

    def mask_png(self) -> bytes:
        """8-bit L PNG, 255 inside the lungs."""
        return masks.mask_png(self.mask)


def not_found_message(reason: str) -> str:
    return f"{LUNGS_NOT_FOUND} ({reason})"


class LungSegmenter:
    def __init__(
        self,
        model: Any,
        card: dict[str, Any],
        sha256: str,
        path: Path | None = None,
        *,
        runner: LiteRunner | None = None,
    ) -> None:
        """``model``: a Keras model, or None with a LiteRT ``runner``; ``sha256`` is the
        Keras artifact's either way (it names the segmenter version)."""
        self.model = model
        self.path = path
        self.card = card
        self.sha256 = sha256
        self.runtime = "keras" if runner is None else "litert"
        self.version = f"{card.get('name', 'lung-unet')}@{sha256[:12]}"
        self.size = int(card["preprocessing"]["input_size"])
        self.threshold = float(card.get("postprocessing", {}).get("threshold", 0.5))
        self._run: KerasRunner | LiteRunner = runner if runner is not None else KerasRunner(model)
        if self._run.input_shape != (self.size, self.size, 1):
            raise ValueError(
                f"Model input {(None, *self._run.input_shape)} does not match the card's "
                f"input size {self.size}."
            )

    @classmethod
    def load(
        cls,
        path: str | Path = BUNDLED_LUNG_MODEL,
        *,
        expected_sha256: str | None = None,
        card: dict[str, Any] | None = None,
    ) -> LungSegmenter:
        """Load a ``.keras`` lung model and its card (``card``, else the one beside it);
        refuse a file whose sha256 differs from ``expected_sha256``. The first call is
        traced here, so segment() is warm."""
        import keras

        path = Path(path)
        actual = sha256_file(path)
        if expected_sha256 is not None and actual != expected_sha256:
            raise ArtifactIntegrityError(
                f"Artifact {path.name} has sha256 {actual}, expected {expected_sha256}."
            )
        model = keras.saving.load_model(path, compile=False)
        segmenter = cls(model, card if card is not None else read_card(path), actual, path)
        segmenter.probability(np.zeros((1, segmenter.size, segmenter.size), np.float32))
        return segmenter

    @classmethod
    def load_lite(
        cls,
        path: str | Path = BUNDLED_LUNG_MODEL,
        *,
        expected_sha256: str | None = None,
        num_threads: int | None = None,
        card: dict[str, Any] | None = None,
        lite_path: str | Path | None = None,
        record: dict[str, Any] | None = None,
    ) -> LungSegmenter:
        """The lung model converted to LiteRT (``lite_path``, by default ``<stem>.tflite``
        beside the ``.keras`` file ``path``), refused unless it was converted from the
        Keras file with ``expected_sha256`` (or, without it, from the Keras file at
        ``path``). ``card`` and ``record`` (the conversion record): where the caller
        keeps them (the model registry: in the database), else the files beside."""
        path = Path(path)
        source = expected_sha256 if expected_sha256 is not None else sha256_file(path)
        runner = load_lite_runner(
            lite_path if lite_path is not None else lite_path_for(path),
            source_sha256=source,
            num_threads=num_threads,
            record=record,
        )
        if card is None:
            card = read_card(path)
        segmenter = cls(None, card, source, path, runner=runner)
        segmenter.probability(np.zeros((1, segmenter.size, segmenter.size), np.float32))
        return segmenter

    def probability(self, gray_batch: np.ndarray) -> np.ndarray:
        """Lung probabilities (n, S, S) of a letterboxed batch (n, S, S, 1) or (n, S, S)."""
        batch = np.asarray(gray_batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[..., np.newaxis]
        if batch.shape[1:] != (self.size, self.size, 1):
            raise ValueError(
                f"Expected a batch of shape (n, {self.size}, {self.size}, 1), got {batch.shape}."
            )
        probabilities: np.ndarray = self._run(batch)[..., 0]
        return probabilities

    def run(self, batch: np.ndarray, /) -> np.ndarray:
        """``ServedModel.run``: :meth:`probability`."""
        return self.probability(batch)

    def prepare(self, image: Image.Image | np.ndarray, /) -> tuple[np.ndarray, masks.Letterbox]:
        """``ServedModel.prepare``: the image letterboxed to the model's square input
        (S, S), and the letterbox that maps the answer back to the image."""
        gray = image if isinstance(image, np.ndarray) else to_unit_gray(image)
        gray = np.clip(np.nan_to_num(np.asarray(gray, dtype=np.float32), nan=0.0), 0.0, 1.0)
        return masks.letterbox(gray, self.size)

    def segment(self, image: Image.Image) -> LungResult:
        """Lung fields of a PIL image of any mode (converted as the classifier converts it)."""
        return self.segment_gray(to_unit_gray(image))

    def segment_gray(self, gray: np.ndarray) -> LungResult:
        """Lung fields of a grayscale float image (H, W) with values in [0, 1]."""
        gray = np.nan_to_num(np.asarray(gray, dtype=np.float32), nan=0.0)
        if gray.ndim == 3 and gray.shape[-1] == 1:
            gray = gray[..., 0]
        if gray.ndim != 2 or min(gray.shape) < 8:
            raise ValueError(f"Expected a 2-D grayscale image of at least 8x8, got {gray.shape}.")
        gray = np.clip(gray, 0.0, 1.0)
        if float(gray.max() - gray.min()) < 1e-3:
            return self._not_found(np.zeros(gray.shape, dtype=bool), "blank image")
        x, box = self.prepare(gray)
        prob = self.run(x[np.newaxis])[0]
        top, left, bottom, right = box.content_box()
        threshold = self.threshold
        kept = masks.postprocess(prob, threshold)
        found, reason = masks.plausibility(kept[top:bottom, left:right])
        if reason == "one region":
            # Two lungs joined by a bridge of middling probability (the upper
            # mediastinum of small children): a higher threshold cuts the bridge.
            for higher in SPLIT_THRESHOLDS:
                candidate = masks.postprocess(prob, higher)
                if masks.plausibility(candidate[top:bottom, left:right])[0]:
                    threshold, kept, found, reason = higher, candidate, True, ""
                    break
        # Probabilities of the kept regions only (a 1-pixel rim so the resampled edge
        # is right), holes counted as lung; then back at the original resolution.
        rim = kept | _dilate(kept)
        clean = np.where(rim, prob, 0.0)
        clean[kept & (prob < threshold)] = 1.0
        mask = masks.unletterbox(clean, box) >= threshold
        if not found:
            return self._not_found(mask, reason)
        return LungResult(
            mask=mask,
            bbox=masks.lung_bbox(mask),
            area_fraction=float(mask.mean()),
            found=True,
            message="",
            version=self.version,
        )

    def _not_found(self, mask: np.ndarray, reason: str) -> LungResult:
        log.info("lungs not found: %s", reason)
        return LungResult(
            mask=mask,
            bbox=None,
            area_fraction=float(mask.mean()),
            found=False,
            message=not_found_message(reason),
            version=self.version,
        )


def _dilate(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    dilated: np.ndarray = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
    return dilated

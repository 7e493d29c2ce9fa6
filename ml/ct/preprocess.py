"""One preprocessing for training and serving CT slices (NumPy, OpenCV; no TensorFlow).

A slice of any size (the zenodo export is 256 x 256; MedSeg crops are 160-510 px and not
square) becomes the model input in three steps:

1. **Intensity**: percentile scaling, ``low_percentile`` -> 0 and ``high_percentile``
   -> 1, clipped. The two training sets come out of different pipelines (zenodo: a wide
   window then CLAHE; MedSeg: a lung window, 8-bit JPEG) and the platform feeds DICOM
   windowed from the header or PNG/JPEG as uploaded, so the input scale is not known:
   percentile scaling makes the result independent of any affine change of the input
   (uint8 0-255, float 0-1, raw Hounsfield units all give the same input). With
   ``normalise="clahe"`` a contrast-limited adaptive histogram equalisation follows
   (clip ``clahe_clip``, ``clahe_tiles`` x ``clahe_tiles`` tiles), which brings the
   local contrast of both sets closer; which of the two is used was chosen on
   validation (see the card).
2. **Square**: padded to a square with 0 (the darkest value, as air outside the body),
   centred; never stretched.
3. **Size**: resized to ``size`` x ``size`` (area averaging when shrinking, bilinear
   when enlarging).

:class:`Frame` remembers the geometry, so a mask at the model's resolution goes back to
the original height x width (:meth:`Frame.to_original`) and a reference mask comes to
the model's resolution for training (:meth:`Frame.to_model`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

CT_PREPROCESSING_VERSION = 1
INPUT_SIZE = 256
MIN_SIDE = 16


@dataclass(frozen=True)
class CTPreprocessing:
    """The parameters of :func:`prepare_slice`; recorded on the model card."""

    size: int = INPUT_SIZE
    normalise: str = "percentile"  # "percentile" or "clahe" (percentile, then CLAHE)
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    pad_value: float = 0.0
    version: int = CT_PREPROCESSING_VERSION

    def __post_init__(self) -> None:
        if self.normalise not in ("percentile", "clahe"):
            raise ValueError(f"normalise must be 'percentile' or 'clahe', got {self.normalise!r}.")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError("Need 0 <= low_percentile < high_percentile <= 100.")
        if self.size < MIN_SIDE:
            raise ValueError(f"size must be at least {MIN_SIDE}, got {self.size}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CTPreprocessing:
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        version = int(known.get("version", CT_PREPROCESSING_VERSION))
        if version != CT_PREPROCESSING_VERSION:
            raise ValueError(
                f"CT preprocessing version {version} is not supported "
                f"(this code implements version {CT_PREPROCESSING_VERSION})."
            )
        return cls(**known)


DEFAULT_PREPROCESSING = CTPreprocessing()


@dataclass(frozen=True)
class Frame:
    """Where the original ``height`` x ``width`` slice lies in the model's ``size`` square.

    The slice was padded to a ``side`` x ``side`` square (``top`` rows above, ``left``
    columns to the left), then resized to ``size`` x ``size``.
    """

    height: int
    width: int
    side: int
    top: int
    left: int
    size: int

    def to_original(self, mask: np.ndarray) -> np.ndarray:
        """A ``size`` x ``size`` map back at ``height`` x ``width``.

        Bool masks are resampled bilinearly and thresholded at 0.5 (smooth edges rather
        than the model's pixel grid); float maps bilinearly; integer label maps by
        nearest neighbour. The result has the input's dtype.
        """
        array = np.asarray(mask)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.shape != (self.size, self.size):
            raise ValueError(f"Expected a {self.size}x{self.size} map, got {array.shape}.")
        if array.dtype == bool:
            back = self._resize(array.astype(np.float32), cv2.INTER_LINEAR)
            return np.asarray(self._crop(back) >= 0.5)
        if np.issubdtype(array.dtype, np.integer):
            back = self._resize(array.astype(np.float32), cv2.INTER_NEAREST)
            return self._crop(back).astype(array.dtype)
        back = self._resize(array.astype(np.float32), cv2.INTER_LINEAR)
        return self._crop(back).astype(array.dtype, copy=False)

    def to_model(self, mask: np.ndarray) -> np.ndarray:
        """A reference mask or label map at the original size, at the model's resolution
        (padded with 0, nearest neighbour: labels stay labels). Keeps the dtype."""
        array = np.asarray(mask)
        if array.shape != (self.height, self.width):
            raise ValueError(f"Expected a {self.height}x{self.width} mask, got {array.shape}.")
        padded = np.zeros((self.side, self.side), np.uint8)
        padded[self.top : self.top + self.height, self.left : self.left + self.width] = array
        out = cv2.resize(padded, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        return out.astype(array.dtype)

    def content_box(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the original slice inside the model input."""
        scale = self.size / self.side
        return (
            round(self.top * scale),
            round(self.left * scale),
            round((self.top + self.height) * scale),
            round((self.left + self.width) * scale),
        )

    def _resize(self, array: np.ndarray, interpolation: int) -> np.ndarray:
        if self.side == self.size:
            return array
        out: np.ndarray = cv2.resize(array, (self.side, self.side), interpolation=interpolation)
        return out

    def _crop(self, array: np.ndarray) -> np.ndarray:
        return array[self.top : self.top + self.height, self.left : self.left + self.width]


def as_gray(gray: np.ndarray) -> np.ndarray:
    """A 2-D float32 array of a slice; a clear ValueError for anything else."""
    array = np.asarray(gray)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"Expected a 2-D grayscale CT slice, got an array of shape {array.shape}.")
    if min(array.shape) < MIN_SIDE:
        raise ValueError(
            f"A CT slice must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {array.shape}."
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"Expected numeric pixel values, got dtype {array.dtype}.")
    return np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def normalise_intensity(
    gray: np.ndarray, spec: CTPreprocessing = DEFAULT_PREPROCESSING
) -> np.ndarray:
    """Float32 in [0, 1] at the slice's own size (step 1 of the module docstring)."""
    values = as_gray(gray)
    low, high = np.percentile(values, [spec.low_percentile, spec.high_percentile])
    if float(high - low) < 1e-6:
        return np.zeros(values.shape, np.float32)  # a blank slice stays blank
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if spec.normalise == "clahe":
        clahe = cv2.createCLAHE(
            clipLimit=spec.clahe_clip, tileGridSize=(spec.clahe_tiles, spec.clahe_tiles)
        )
        equalised: np.ndarray = clahe.apply(np.round(scaled * 255).astype(np.uint8))
        scaled = np.asarray(equalised, np.float32) / np.float32(255.0)
    result: np.ndarray = scaled
    return result


def frame_of(height: int, width: int, size: int = INPUT_SIZE) -> Frame:
    side = max(height, width)
    return Frame(height, width, side, (side - height) // 2, (side - width) // 2, size)


def prepare_slice(
    gray: np.ndarray, spec: CTPreprocessing = DEFAULT_PREPROCESSING
) -> tuple[np.ndarray, Frame]:
    """Model input (float32 ``size`` x ``size``, values in [0, 1]) and its :class:`Frame`.

    ``gray``: a 2-D slice (uint8, or float of any scale) of any size; see the module
    docstring for the steps. The same function prepares training and serving inputs.
    """
    scaled = normalise_intensity(gray, spec)
    height, width = scaled.shape
    frame = frame_of(height, width, spec.size)
    padded = np.full((frame.side, frame.side), spec.pad_value, np.float32)
    padded[frame.top : frame.top + height, frame.left : frame.left + width] = scaled
    if frame.side == spec.size:
        return padded, frame
    interpolation = cv2.INTER_AREA if frame.side > spec.size else cv2.INTER_LINEAR
    x = cv2.resize(padded, (spec.size, spec.size), interpolation=interpolation)
    return np.clip(x, 0.0, 1.0).astype(np.float32), frame

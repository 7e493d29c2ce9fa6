"""The one preprocessing function shared by training and serving.

A model only sees what this module makes of an image, so training and
serving must run the very same code: any difference (interpolation, padding,
scaling) shows up as an unexplained drop in accuracy after deployment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

PREPROCESSING_VERSION = 1


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model card records so a model can be served exactly as trained."""

    input_size: int
    channels: int = 1
    resize: str = "letterbox-bilinear"  # keep aspect ratio, pad with black to a square
    normalise: str = "unit-range"  # [0, 1]: 8-bit / 255, deeper images by their own min/max
    version: int = PREPROCESSING_VERSION

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def open_image(source: str | Path | BinaryIO) -> Image.Image:
    """Open an image file and apply its EXIF orientation (phone photos of films)."""
    image = Image.open(source)
    image.load()
    return ImageOps.exif_transpose(image)


def to_unit_gray(image: Image.Image) -> np.ndarray:
    """Grayscale float32 array in [0, 1], whatever the mode and bit depth."""
    mode = image.mode
    if mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        if high <= low:
            return np.zeros(array.shape, dtype=np.float32)
        return (array - low) / (high - low)
    if mode in {"RGBA", "LA", "PA"} or (mode == "P" and "transparency" in image.info):
        # Composite on black: transparent margins of exported figures are background.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    gray = image.convert("L")
    return np.asarray(gray, dtype=np.float32) / 255.0


def preprocess(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Image -> float32 array of shape (size, size, channels) in [0, 1]."""
    gray = to_unit_gray(image)
    height, width = gray.shape
    side = max(height, width)
    canvas = np.zeros((side, side), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = gray
    resized = Image.fromarray(canvas).resize(
        (spec.input_size, spec.input_size), Image.Resampling.BILINEAR
    )
    array = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    array = array[..., np.newaxis]
    if spec.channels == 3:
        array = np.repeat(array, 3, axis=-1)
    return array

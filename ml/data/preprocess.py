"""The one preprocessing function shared by training and serving.

A model only sees what this module makes of an image, so training and
serving must run the very same code: any difference (interpolation, padding,
scaling) shows up as an unexplained drop in accuracy after deployment.

Two versions, recorded on every model card (``preprocessing.version``); a model is
always served with the version it was trained with:

* **v1** - the whole image, letterboxed to a square (black padding), scaled to [0, 1].
* **v2** - the lung fields first. Every source in the shared data maps almost
  one-to-one to a label, so anything outside the lungs that identifies the source
  (borders, corner markers, letterbox padding, the abdomen, the arms) is a shortcut.
  v2 crops to the lung bounding box of the segmentation (:mod:`ml.lungs`) plus a
  margin, squared, equalises contrast with CLAHE (fixed parameters) and scales the
  intensities by percentiles of the lung pixels only, so exposure and
  post-processing of the source count less; optionally everything outside the
  (dilated) lung mask is set to 0. Without a lung mask (segmentation found
  nothing plausible) the whole image is used, letterboxed, and the caller flags it.

This module imports no TensorFlow (the web process may import it); OpenCV is
imported inside the v2 functions only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

PREPROCESSING_VERSION = 1  # what a spec without a version means (old cards)
LATEST_VERSION = 2
V2_SETTINGS = ("crop_margin", "clahe_clip", "clahe_tiles", "mask_outside", "mask_dilation")


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model card records so a model can be served exactly as trained."""

    input_size: int
    channels: int = 1
    resize: str = "letterbox-bilinear"  # keep aspect ratio, pad with black to a square
    normalise: str = "unit-range"  # [0, 1]: 8-bit / 255, deeper images by their own min/max
    version: int = PREPROCESSING_VERSION
    # v2 only: crop margin (share of the lung box side on each side), CLAHE, masking.
    crop_margin: float = 0.08
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    mask_outside: bool = False
    mask_dilation: float = 0.04  # share of the frame side the lung mask grows by

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        if self.version < 2:  # v1 cards keep their v1 keys only
            for key in (
                "crop_margin",
                "clahe_clip",
                "clahe_tiles",
                "mask_outside",
                "mask_dilation",
            ):
                data.pop(key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PreprocessSpec:
        """The spec recorded on a card (unknown keys refused: a newer card needs newer code)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"segmenter"}
        if unknown:
            raise ValueError(f"Unknown preprocessing settings on the card: {sorted(unknown)}")
        values = {k: v for k, v in data.items() if k in known}
        spec = cls(**values)  # type: ignore[arg-type]
        if spec.version not in (1, 2):
            raise ValueError(f"Unknown preprocessing version {spec.version}.")
        return spec


@dataclass(frozen=True)
class Prepared:
    """What preprocessing made of one image: the model input and where the lungs are in it."""

    x: np.ndarray  # float32 (S, S, C) in [0, 1]
    lung_mask: np.ndarray | None  # bool (S, S) in the same frame, None without a mask
    box: tuple[int, int, int, int]  # (top, left, bottom, right) of the frame in the image
    used_lungs: bool  # False: v2 fell back to the whole image (no plausible lungs)
    visible: np.ndarray | None = None  # bool (S, S): what mask_outside kept, else None


def open_image(source: str | Path | IO[bytes]) -> Image.Image:
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


def preprocess(
    image: Image.Image, spec: PreprocessSpec, lung_mask: np.ndarray | None = None
) -> np.ndarray:
    """Image -> float32 array of shape (size, size, channels) in [0, 1].

    ``lung_mask`` (bool, the image's resolution) is used by v2 and ignored by v1.
    """
    return prepare(image, spec, lung_mask).x


def prepare(
    image: Image.Image | np.ndarray, spec: PreprocessSpec, lung_mask: np.ndarray | None = None
) -> Prepared:
    """Preprocess one image and carry its lung mask into the model's frame.

    ``image`` is a PIL image or a gray float array in [0, 1] (H, W).
    """
    gray = image if isinstance(image, np.ndarray) else to_unit_gray(image)
    if spec.version >= 2:
        return _prepare_v2(gray, spec, lung_mask)
    x = _letterbox_v1(gray, spec)
    mask = None
    if lung_mask is not None and lung_mask.any():
        mask = _letterbox_v1(lung_mask.astype(np.float32), spec)[..., 0] > 0.5
    height, width = gray.shape
    return Prepared(x=x, lung_mask=mask, box=(0, 0, height, width), used_lungs=False)


def _channels(array: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    array = array[..., np.newaxis]
    if spec.channels == 3:
        array = np.repeat(array, 3, axis=-1)
    return array


def _letterbox_v1(gray: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    height, width = gray.shape
    side = max(height, width)
    canvas = np.zeros((side, side), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = gray
    resized = Image.fromarray(canvas).resize(
        (spec.input_size, spec.input_size), Image.Resampling.BILINEAR
    )
    array = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return _channels(array, spec)


def lung_frame(mask: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
    """The square frame around the lungs: their bounding box plus ``margin`` per side.

    Square so that the aspect ratio of the lung fields (which differs between children
    and adults) survives the resize; it may reach past the image, which is padded.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0 or len(cols) == 0:
        return None
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    side = max(bottom - top, right - left)
    side = round(side * (1 + 2 * margin))
    cy, cx = (top + bottom) / 2, (left + right) / 2
    top, left = round(cy - side / 2), round(cx - side / 2)
    return top, left, top + side, left + side


def _crop(array: np.ndarray, box: tuple[int, int, int, int], fill: float) -> np.ndarray:
    top, left, bottom, right = box
    height, width = array.shape
    out = np.full((bottom - top, right - left), fill, dtype=array.dtype)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(bottom, height), min(right, width)
    if src_bottom > src_top and src_right > src_left:
        out[src_top - top : src_bottom - top, src_left - left : src_right - left] = array[
            src_top:src_bottom, src_left:src_right
        ]
    return out


def _prepare_v2(gray: np.ndarray, spec: PreprocessSpec, lung_mask: np.ndarray | None) -> Prepared:
    import cv2

    size = spec.input_size
    height, width = gray.shape
    box = None
    mask_crop = None
    if lung_mask is not None:
        if lung_mask.shape != gray.shape:
            raise ValueError(
                f"Lung mask shape {lung_mask.shape} differs from the image's {gray.shape}."
            )
        box = lung_frame(lung_mask, spec.crop_margin)
        if box is not None:
            mask_crop = _crop(lung_mask.astype(np.uint8), box, 0)
    used_lungs = box is not None
    if box is None:
        # No lungs: the whole image, squared (the caller flags the image).
        side = max(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        box = (top, left, top + side, left + side)
    crop = _crop(gray.astype(np.float32), box, 0.0)
    resized = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    frame_mask = None
    if mask_crop is not None:
        frame_mask = cv2.resize(mask_crop, (size, size), interpolation=cv2.INTER_NEAREST) > 0
    # CLAHE with fixed parameters on 8 bits (OpenCV's implementation works on uint8).
    clahe = cv2.createCLAHE(
        clipLimit=spec.clahe_clip, tileGridSize=(spec.clahe_tiles, spec.clahe_tiles)
    )
    equalised = clahe.apply(np.clip(resized * 255.0 + 0.5, 0, 255).astype(np.uint8))
    values = equalised.astype(np.float32)
    inside = values[frame_mask] if frame_mask is not None and frame_mask.sum() > 16 else values
    low, high = np.percentile(inside, (1.0, 99.0))
    if high - low < 1.0:
        low, high = float(values.min()), float(max(values.max(), values.min() + 1.0))
    array = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    visible = None
    if spec.mask_outside and frame_mask is not None:
        grow = max(1, round(spec.mask_dilation * size))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        keep = cv2.dilate(frame_mask.astype(np.uint8), kernel) > 0
        array = np.where(keep, array, 0.0).astype(np.float32)
        visible = keep
    return Prepared(
        x=_channels(array, spec),
        lung_mask=frame_mask,
        box=box,
        used_lungs=used_lungs,
        visible=visible,
    )

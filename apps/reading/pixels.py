"""The stored (de-identified) DICOM of an image as the viewer needs it: its header for
the side panel, and its modality values (after rescale: Hounsfield units for CT) for
true window/level in the browser. PNG and JPEG uploads have neither (their 8-bit
rendition is all there is)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from apps.cases.models import CaseImage

CHEST_PRESETS = {"chest": (None, None)}  # the header's own window (or the full range)
VALUE_LIMIT = 120  # characters of one header value shown


class NoDicomError(LookupError):
    """The image was not uploaded as DICOM (or its stored DICOM cannot be read)."""


def _dataset(image: CaseImage) -> Any:
    from ml.data.dicom import read_dataset

    if not image.original:
        raise NoDicomError("This image was not uploaded as DICOM.")
    try:
        with image.original.open("rb") as handle:
            return read_dataset(handle.read())
    except Exception as exc:
        raise NoDicomError(f"The stored DICOM cannot be read: {exc}") from None


def header(image: CaseImage) -> list[dict[str, str]]:
    """The stored DICOM's elements but the pixel data (de-identified at intake), in tag
    order, each value cut to :data:`VALUE_LIMIT` characters."""
    dataset = _dataset(image)
    rows = []
    for element in dataset.iterall():
        if element.tag == 0x7FE00010 or element.VR in ("OB", "OW", "OF", "OD", "UN"):
            continue
        value = "" if element.VR == "SQ" else str(element.value)
        if len(value) > VALUE_LIMIT:
            value = value[: VALUE_LIMIT - 1] + "…"
        rows.append(
            {"tag": f"({element.tag.group:04X},{element.tag.element:04X})",
             "name": element.name, "value": value}
        )  # fmt: skip
    return rows


def _number(value: Any) -> float | None:
    try:
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            return float(value)
        return float(next(iter(value)))
    except (TypeError, ValueError, StopIteration):
        return None


def pixel_spacing(image: CaseImage) -> tuple[float, float] | None:
    """(row, column) spacing in mm from the stored DICOM, or None."""
    try:
        dataset = _dataset(image)
    except NoDicomError:
        return None
    spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
    try:
        row, column = (float(v) for v in spacing)
    except (TypeError, ValueError):
        return None
    return (row, column) if row > 0 and column > 0 else None


def values(image: CaseImage) -> tuple[bytes, dict[str, Any]]:
    """The modality values as little-endian float32 (row-major) and what the viewer needs
    to window them: size, range, the header's window, presets, inversion, spacing."""
    dataset = _dataset(image)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = dataset.pixel_array.astype(np.float32)
    except Exception as exc:
        raise NoDicomError(f"The stored DICOM's pixels cannot be decoded: {exc}") from None
    if data.ndim != 2:
        raise NoDicomError("The stored DICOM is not a single 2-D grayscale image.")
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        data = data * np.float32(slope) + np.float32(intercept)
    low, high = float(data.min()), float(data.max())
    centre, width = _number(dataset.get("WindowCenter")), _number(dataset.get("WindowWidth"))
    if centre is None or not width or width <= 0:
        centre, width = (low + high) / 2, max(high - low, 1.0)
    presets: dict[str, list[float]] = {"default": [centre, width]}
    kind = image.case.kind
    if kind.window_presets:
        presets |= {name: [c, w] for name, (c, w) in kind.window_presets.items()}
    else:
        presets["chest"] = [centre, width]
    spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
    meta = {
        "width": int(data.shape[1]),
        "height": int(data.shape[0]),
        "min": low,
        "max": high,
        "bits_stored": int(dataset.get("BitsStored") or 0),
        "window": [centre, width],
        "presets": presets,
        "monochrome1": str(dataset.get("PhotometricInterpretation", "")).strip().upper()
        == "MONOCHROME1",
        "pixel_spacing": [float(v) for v in spacing] if spacing else None,
        "units": kind.units if slope is not None else "",
    }
    return np.ascontiguousarray(data, dtype="<f4").tobytes(), meta

"""DICOM pixel data -> the grayscale image the rest of ``ml`` works with.

A radiograph's stored pixel values are not what a radiologist sees: the
modality LUT (rescale slope/intercept) maps them to output units, the VOI
LUT or window centre/width picks the displayed range, and MONOCHROME1 means
"high values are dark". Skipping any of these shows the model an image with
the wrong contrast or inverted, which it would classify with confidence
anyway. This module does those steps with pydicom's own implementations and
refuses what it cannot show faithfully (colour, multi-frame, non-image
objects) instead of guessing.

Compressed transfer syntaxes are decoded by pydicom's optional plugins; which
ones work here is listed by :func:`decodable_transfer_syntaxes` (see
README.md, "Input safety").
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:  # pydicom is imported where a DICOM file is read, not with this module
    from PIL import Image
    from pydicom.dataset import Dataset

MONOCHROME = {"MONOCHROME1", "MONOCHROME2"}


class DicomProblem(ValueError):  # noqa: N818 - reads as what is wrong with the file
    """A DICOM file that cannot be used; ``kind`` says why, for the HTTP status.

    kinds: ``invalid`` (corrupt or truncated), ``unsupported`` (a valid DICOM
    this platform does not take: colour, multi-frame, an undecodable transfer
    syntax, a non-image object), ``too_large`` (more pixels than allowed).
    """

    def __init__(self, problem: str, *, kind: str = "invalid") -> None:
        self.problem = problem
        self.kind = kind
        super().__init__(problem)


def looks_like_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then ``DICM``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_dataset(source: bytes | BinaryIO) -> Dataset:
    """Parse a DICOM Part 10 file (header and pixel data bytes, nothing decoded yet)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every small deviation
            dataset = pydicom.dcmread(stream)
            # Touch every element now: a truncated or mangled header fails
            # here, inside this try, not later while de-identifying.
            for _ in dataset.iterall():
                pass
    except InvalidDicomError:
        raise DicomProblem("the file is not a valid DICOM file.") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise DicomProblem(f"the DICOM file is truncated or corrupt ({_short(exc)}).") from None
    return dataset


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


@dataclass(frozen=True)
class DicomImageInfo:
    rows: int
    columns: int
    photometric: str
    bits_stored: int
    transfer_syntax: str


# Modalities that are never a plain chest radiograph (PS3.3 C.7.3.1.1.1 defined terms).
NOT_RADIOGRAPHS = {
    "CT": "a CT image", "MR": "an MR image", "NM": "a nuclear medicine image",
    "PT": "a PET image", "US": "an ultrasound image", "MG": "a mammogram",
    "XA": "an angiography image", "RF": "a fluoroscopy image", "OP": "an eye photograph",
    "OPT": "an eye OCT image", "ES": "an endoscopy image", "SM": "a slide microscopy image",
    "IVUS": "an intravascular ultrasound image", "IO": "an intra-oral radiograph",
    "PX": "a panoramic dental radiograph", "XC": "an external camera photograph",
}  # fmt: skip
CHEST_BODY_PARTS = {"", "CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LUNG"}
LATERAL_VIEWS = {"LL", "RL", "LATERAL", "LAT", "LLD", "RLD", "LLO", "RLO"}


def not_a_frontal_chest_radiograph(dataset: Dataset) -> str | None:
    """What the header says the image is, when that is not a frontal chest radiograph.

    Only what the header states is used (Modality, Body Part Examined, View
    Position): a missing or unknown value leaves the decision to the pixel gate.
    """
    modality = str(dataset.get("Modality") or "").strip().upper()
    if modality in NOT_RADIOGRAPHS:
        return (
            f"the DICOM file is {NOT_RADIOGRAPHS[modality]} (Modality {modality}), not a chest "
            "radiograph; upload a chest X-ray (CR or DX)."
        )
    body_part = str(dataset.get("BodyPartExamined") or "").strip().upper().replace(" ", "_")
    if body_part not in CHEST_BODY_PARTS:
        return (
            f"the DICOM file is of the {body_part.lower().replace('_', ' ')} (Body Part "
            "Examined), not the chest; upload a chest X-ray."
        )
    view = str(dataset.get("ViewPosition") or "").strip().upper()
    if view in LATERAL_VIEWS:
        return (
            f"the DICOM file is a lateral view (View Position {view}); the model reads "
            "frontal (PA or AP) chest X-rays only."
        )
    return None


def check_image(dataset: Dataset, *, max_pixels: int) -> DicomImageInfo:
    """Refuse, before decoding any pixels, what cannot be shown as one grayscale image."""
    if "PixelData" not in dataset:
        modality = dataset.get("Modality") or "unknown modality"
        raise DicomProblem(
            f"the DICOM file holds no image (a {modality} object such as a report, "
            "plan or waveform); upload the radiograph itself.",
            kind="unsupported",
        )
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames") or 1)
        samples = int(dataset.get("SamplesPerPixel") or 1)
        bits_allocated = int(dataset.BitsAllocated)
        bits_stored = int(dataset.get("BitsStored") or bits_allocated)
        photometric = str(dataset.get("PhotometricInterpretation") or "").strip().upper()
    except (AttributeError, KeyError, TypeError, ValueError):
        raise DicomProblem(
            "the DICOM image description (rows, columns, bits) is missing or invalid."
        ) from None
    if frames > 1:
        raise DicomProblem(
            f"the DICOM file holds {frames} frames; upload a single-frame radiograph.",
            kind="unsupported",
        )
    if samples != 1 or photometric not in MONOCHROME:
        raise DicomProblem(
            f"the DICOM image is {photometric or 'colour'}, not a grayscale radiograph "
            "(MONOCHROME1 or MONOCHROME2).",
            kind="unsupported",
        )
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= 16:
        raise DicomProblem(
            f"the DICOM image has {bits_stored} bits stored in {bits_allocated}; "
            "8- to 16-bit images are accepted.",
            kind="unsupported",
        )
    if rows < 1 or columns < 1:
        raise DicomProblem("the DICOM image has no pixels.")
    if rows * columns > max_pixels:
        raise DicomProblem(
            f"the image has {columns}x{rows} pixels; the limit is {max_pixels:,} pixels.",
            kind="too_large",
        )
    syntax = dataset.file_meta.get("TransferSyntaxUID") if "file_meta" in dir(dataset) else None
    if syntax is None:
        raise DicomProblem("the DICOM file does not say how its pixels are encoded.")
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise DicomProblem(
            f"the DICOM pixel encoding {syntax.name} cannot be decoded here; "
            "export it uncompressed or as JPEG, JPEG 2000 or RLE.",
            kind="unsupported",
        )
    return DicomImageInfo(rows, columns, photometric, bits_stored, syntax.name)


def _voi_output_range(dataset: Dataset, values: np.ndarray) -> tuple[float, float]:
    """The range apply_voi_lut maps into (pydicom's rules), so windowed images keep
    their window instead of being re-stretched to their own min/max."""
    if dataset.get("VOILUTSequence"):
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        if dataset.get("ModalityLUTSequence"):
            bits = int(dataset.ModalityLUTSequence[0].LUTDescriptor[2])
            low, high = 0.0, float(2**bits - 1)
        elif int(dataset.get("PixelRepresentation") or 0) == 0:
            low, high = 0.0, float(2 ** int(dataset.BitsStored) - 1)
        else:
            half = 2 ** (int(dataset.BitsStored) - 1)
            low, high = float(-half), float(half - 1)
        slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
        if slope is not None and intercept is not None:
            low, high = (
                low * float(slope) + float(intercept),
                high * float(slope) + float(intercept),
            )
        return min(low, high), max(low, high)
    return float(values.min()), float(values.max())


def to_unit_gray(dataset: Dataset) -> np.ndarray:
    """Decoded pixels as float32 in [0, 1], white = dense (bone), ready to display.

    Order (PS3.4 grayscale pipeline): modality LUT / rescale, then VOI LUT or
    the first window centre/width, then MONOCHROME1 inversion. Without a VOI
    the image is scaled by its own min/max, as PNG/JPEG deeper than 8 bits are.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = dataset.pixel_array
            values = apply_modality_lut(raw, dataset)
            has_voi = bool(dataset.get("VOILUTSequence")) or (
                "WindowCenter" in dataset and "WindowWidth" in dataset
            )
            if has_voi:
                values = apply_voi_lut(values, dataset, index=0)
            values = np.asarray(values, dtype=np.float64)
            low, high = (
                _voi_output_range(dataset, values)
                if has_voi
                else (
                    float(values.min()),
                    float(values.max()),
                )
            )
    except DicomProblem:
        raise
    except Exception as exc:
        raise DicomProblem(
            f"the DICOM pixel data is truncated or corrupt ({_short(exc)})."
        ) from None
    if values.ndim != 2:
        raise DicomProblem("the DICOM pixel data is not a single 2-D image.", kind="unsupported")
    if not np.all(np.isfinite(values)):
        raise DicomProblem("the DICOM pixel data holds invalid values.")
    gray = (values - low) / (high - low) if high > low else np.zeros_like(values)
    gray = np.clip(gray, 0.0, 1.0)
    if str(dataset.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        gray = 1.0 - gray
    return gray.astype(np.float32)


def to_uint8(gray: np.ndarray) -> np.ndarray:
    """The 8-bit rendition stored for display and inference (the model trains on 8-bit)."""
    rendition: np.ndarray = np.round(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8)
    return rendition


def open_dicom_as_image(
    source: str | bytes | BinaryIO, *, max_pixels: int = 60_000_000
) -> Image.Image:
    """A DICOM file as an 8-bit grayscale PIL image (for ``python -m ml predict``)."""
    from pathlib import Path

    from PIL import Image

    if isinstance(source, str | Path):
        source = Path(source).read_bytes()
    dataset = read_dataset(source)
    check_image(dataset, max_pixels=max_pixels)
    return Image.fromarray(to_uint8(to_unit_gray(dataset)), mode="L")


def decodable_transfer_syntaxes() -> list[str]:
    """Names of the transfer syntaxes whose pixel data pydicom can decode here."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID, AllTransferSyntaxes

    names = []
    for uid in AllTransferSyntaxes:
        try:
            decoder = get_decoder(UID(uid))
        except NotImplementedError:
            continue
        if decoder.is_available:
            names.append(UID(uid).name)
    return names

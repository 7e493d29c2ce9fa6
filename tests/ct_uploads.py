"""CT uploads for tests: the fixture slices (tests/fixtures/ct), an abdomen-like slice
made from one of them, and DICOM files built with pydicom (CT with Hounsfield units,
a multi-frame CT volume, an X-ray)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from scipy import ndimage

CT_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ct"
ZENODO = CT_FIXTURES / "zenodo"
CT_SLICE = ZENODO / "images" / "0313.jpg"
CT_SLICE_2 = ZENODO / "images" / "1004.jpg"
MEDSEG_SLICE = CT_FIXTURES / "medseg" / "images" / "slice-003.jpg"


def ct_upload(path: Path = CT_SLICE, name: str | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(name or path.name, path.read_bytes(), content_type="image/jpeg")


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def abdomen_like_slice(stem: str = "0313") -> np.ndarray:
    """A real chest slice with its lungs (the radiologists' mask, grown by 3 pixels)
    filled with the body's soft-tissue intensity and a little noise: an axial CT slice
    with no lung tissue in it, as an abdomen slice below the lung bases is."""
    gray = np.asarray(Image.open(ZENODO / "images" / f"{stem}.jpg").convert("L"), np.float32)
    lungs = np.asarray(Image.open(ZENODO / "lung_masks" / f"{stem}.png").convert("L")) > 127
    lungs = ndimage.binary_dilation(lungs, iterations=3)
    body = ndimage.binary_fill_holes(gray > 60) & ~lungs
    out = gray.copy()
    rng = np.random.default_rng(0)
    out[lungs] = np.median(gray[body]) + rng.normal(0.0, 6.0, int(lungs.sum()))
    return np.clip(out, 0, 255).astype(np.uint8)


def abdomen_like_upload() -> SimpleUploadedFile:
    return SimpleUploadedFile("abdomen.png", png_bytes(abdomen_like_slice()), "image/png")


def hounsfield_of(path: Path = CT_SLICE) -> np.ndarray:
    """A fixture slice as int16 Hounsfield units: 0..255 mapped onto -1000..+600 HU
    (the stored value is HU + 1024, as scanners store them)."""
    gray = np.asarray(Image.open(path).convert("L"), np.float32)
    return np.round(gray / 255.0 * 1600.0 - 1000.0).astype(np.int16)


def ct_dicom(
    hu: np.ndarray | None = None,
    *,
    frames: int = 1,
    modality: str = "CT",
    window: tuple[list[float], list[float]] | None = ([40.0], [400.0]),
    rescale: bool = True,
    body_part: str = "CHEST",
    name: str = "slice.dcm",
) -> SimpleUploadedFile:
    """A DICOM Part 10 file of one CT slice (or ``frames`` of them), uncompressed.

    Stored values are HU + 1024 (Rescale Intercept -1024) unless ``rescale`` is False;
    ``window`` is the header's (centres, widths), by default a soft-tissue window.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    hu = hounsfield_of() if hu is None else hu
    stored = (hu.astype(np.int32) + (1024 if rescale else 0)).clip(0, 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = modality
    dataset.PatientID = "CT-TEST-1"
    dataset.PatientName = "Test^Ct"
    if body_part:
        dataset.BodyPartExamined = body_part
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 12
    dataset.HighBit = 11
    dataset.PixelRepresentation = 0
    if rescale:
        dataset.RescaleIntercept = -1024
        dataset.RescaleSlope = 1
    if window is not None:
        dataset.WindowCenter = window[0] if len(window[0]) > 1 else window[0][0]
        dataset.WindowWidth = window[1] if len(window[1]) > 1 else window[1][0]
    pixels = np.stack([stored] * frames) if frames > 1 else stored
    if frames > 1:
        dataset.NumberOfFrames = frames
    dataset.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="application/dicom")


def lung_window_rendition(hu: np.ndarray, centre: float = -600.0, width: float = 1500.0):
    """What the platform stores for a CT DICOM shown through a window (8-bit)."""
    low = centre - width / 2.0
    return np.round(np.clip((hu.astype(np.float32) - low) / width, 0.0, 1.0) * 255.0).astype(
        np.uint8
    )

"""Identifiers inside the pixel data of a DICOM upload: a compressed frame's own text.

A JPEG frame can carry a COM segment and an APP1/EXIF block, a JPEG 2000 codestream a
COM marker, an RLE frame bytes its segment table never points at, uncompressed pixel
data bytes past the image; decoders skip all of them, so they are invisible on screen.
Each file here plants a name, an MRN and a birth date there, goes through the real
upload service, and the stored files must hold none of them while the stored DICOM
still decodes to exactly the pixels of the upload.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from apps.cases import services
from apps.cases.models import Case, CaseImage
from apps.cases.pixel_data import clean_pixel_data
from apps.cases.validation import UploadRejected
from ml.data.dicom import DicomProblem
from tests.conftest import IMAGES, stored_files, upload_of

NAME, MRN, BIRTH_DATE = "DOE^JOHN", "MRN-20240917-55", "19610402"
SECRETS = [NAME, MRN, BIRTH_DATE]
TEXT = f"Patient {NAME} {MRN} born {BIRTH_DATE}".encode()


def _gray(bits: int = 8) -> np.ndarray:
    with Image.open(IMAGES / "2168a917.jpg") as image:
        gray = np.asarray(image.convert("L"), dtype=np.uint16)
    return gray if bits == 8 else (gray * 16).astype(np.uint16)  # 12-bit values


def _dataset(pixels: np.ndarray, bits: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = NAME
    ds.PatientID = MRN
    ds.PatientBirthDate = BIRTH_DATE
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.PixelRepresentation = 0
    dtype = np.uint8 if bits == 8 else np.uint16
    ds.PixelData = pixels.astype(dtype).tobytes()
    return ds


def _file(ds: Dataset, syntax, frame: bytes | None = None) -> bytes:
    if frame is not None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([frame], has_bot=False)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = TEXT.decode()  # ImageDescription
    exif[0x013B] = NAME  # Artist
    return exif.tobytes()


def jpeg_with_text() -> bytes:
    """A baseline JPEG DICOM whose frame has a COM segment, an EXIF APP1 block and an
    XMP APP1 block with the identifiers, and the identifiers after its EOI."""
    buffer = io.BytesIO()
    Image.fromarray(_gray().astype(np.uint8)).save(
        buffer, format="JPEG", quality=92, comment=TEXT, exif=_exif()
    )
    jpeg = buffer.getvalue()
    xmp = _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta>" + TEXT + b"</x:xmpmeta>")
    jpeg = jpeg[:2] + xmp + jpeg[2:] + TEXT
    for planted in (TEXT, b"\xff\xfe", b"Exif"):
        assert planted in jpeg
    return _file(_dataset(_gray(), 8), JPEGBaseline8Bit, jpeg)


def _j2k_with_comment(codestream: bytes) -> bytes:
    siz_end = 4 + int.from_bytes(codestream[4:6], "big")
    comment = _segment(0x64, b"\x00\x01" + TEXT)  # COM, Latin-1 text
    return codestream[:siz_end] + comment + codestream[siz_end:] + TEXT


def j2k_with_text() -> bytes:
    """A lossless JPEG 2000 DICOM whose codestream has a COM marker with the
    identifiers, and the identifiers after its EOC."""
    ds = _dataset(_gray(12), 12)
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    return _file(ds, JPEG2000Lossless, _j2k_with_comment(frame))


def rle_with_text() -> bytes:
    """An RLE DICOM whose segment table's unused offsets and whose frame's end hold the
    identifiers."""
    ds = _dataset(_gray(12), 12)
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    used = int.from_bytes(frame[:4], "little")
    hidden = (MRN.encode() + b"\x00" * 8)[:16]  # 4 unused offsets
    frame = frame[: 4 + 4 * used] + hidden + frame[4 + 4 * used + 16 :] + TEXT
    return _file(ds, RLELossless, frame)


def native_with_text() -> bytes:
    """Uncompressed pixel data with the identifiers after the image's own bytes."""
    ds = _dataset(_gray(12), 12)
    ds.PixelData = ds.PixelData + TEXT + b"\x00" * (len(TEXT) % 2)
    return _file(ds, ExplicitVRLittleEndian)


def _pixels(content: bytes) -> np.ndarray:
    return pydicom.dcmread(io.BytesIO(content)).pixel_array


@pytest.mark.parametrize(
    "build", [jpeg_with_text, j2k_with_text, rle_with_text, native_with_text],
    ids=["jpeg-com-exif-xmp", "j2k-com", "rle-hidden-offsets", "native-trailing"],
)  # fmt: skip
@pytest.mark.slow
def test_identifiers_inside_the_pixel_data_are_not_stored(build, clinician, media_root):
    content = build()
    assert all(secret.encode() in content for secret in SECRETS)
    case = services.create_case(owner=clinician, files=[upload_of("frame.dcm", content)])
    image = case.images.get()
    files = stored_files(media_root)
    assert len(files) == 2  # the PNG rendition and the de-identified DICOM
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, (path.name, secret)
            assert secret.encode("utf-16-le") not in data, (path.name, secret)  # EXIF/XMP
    stored = image.original.read()
    ds = pydicom.dcmread(io.BytesIO(stored))
    assert ds.PatientIdentityRemoved == "YES"
    assert (
        ds.file_meta.TransferSyntaxUID
        == pydicom.dcmread(io.BytesIO(content)).file_meta["TransferSyntaxUID"].value
    )
    # The same image: the coded data were copied (or re-encoded losslessly).
    np.testing.assert_array_equal(_pixels(stored), _pixels(content))


def _jpeg_with_segment(marker: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_gray().astype(np.uint8)).save(buffer, format="JPEG", quality=92)
    jpeg = buffer.getvalue()
    return _file(
        _dataset(_gray(), 8), JPEGBaseline8Bit, jpeg[:2] + _segment(marker, TEXT) + jpeg[2:]
    )


def test_a_frame_that_cannot_be_cleaned_is_refused_and_nothing_stored(clinician, media_root):
    """A JPEG segment of a reserved marker (JPG0, FFF0): its use is unknown, so it can
    neither be dropped safely nor kept."""
    with pytest.raises(UploadRejected) as refused:
        services.create_case(
            owner=clinician, files=[upload_of("odd.dcm", _jpeg_with_segment(0xF0))]
        )
    assert refused.value.status == 415
    assert refused.value.problem == (
        "the JPEG pixel data has a segment (marker FFF0) may hold text that cannot be "
        "removed without changing the image, so it cannot be de-identified; export it "
        "uncompressed or as baseline JPEG, JPEG-LS or JPEG 2000."
    )
    assert Case.objects.count() == CaseImage.objects.count() == 0
    assert stored_files(media_root) == []


def test_an_encapsulated_syntax_without_a_cleaner_is_refused():
    ds = _dataset(_gray(), 8)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + TEXT], has_bot=False)
    with pytest.raises(DicomProblem) as refused:
        clean_pixel_data(ds)
    assert refused.value.kind == "unsupported"
    assert "cannot be de-identified" in refused.value.problem


@pytest.mark.parametrize(
    "name", ["MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm",
             "MR_small_jp2klossless.dcm", "JPEG2000.dcm"],
)  # fmt: skip
def test_real_jpeg_ls_and_j2k_frames_lose_their_text_and_keep_their_pixels(name):
    """pydicom's own JPEG-LS and JPEG 2000 files (no JPEG-LS encoder is installed here),
    with a COM and an APP1 segment (JPEG-LS) or a COM marker (JPEG 2000) added."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert isinstance(path, str), name
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.copy()
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    if frame[:2] == b"\xff\x4f":
        frame = _j2k_with_comment(frame)
    else:
        frame = (
            frame[:2] + _segment(0xFE, TEXT) + _segment(0xE1, b"Exif\x00\x00" + TEXT) + frame[2:]
        )
    ds.PixelData = encapsulate([frame], has_bot=False)
    clean_pixel_data(ds)
    assert TEXT not in ds.PixelData
    assert NAME.encode() not in ds.PixelData
    again = pydicom.dcmread(io.BytesIO(_file(ds, ds.file_meta.TransferSyntaxUID)))
    np.testing.assert_array_equal(again.pixel_array, expected)

"""Hostile uploads posted through the API (memory and decoding).

Each file of the corpus is built here, small and deterministic: compressed
DICOMs whose codestream declares another size than Rows/Columns (JPEG,
JPEG-LS, JPEG 2000, HTJ2K), a deflate bomb, PNG/JPEG/TIFF decompression bombs,
a zip inside a DICOM, truncated fragments. Each gets a 4xx whose message
names the file, nothing is stored, and the peak RSS of this process (the web
process: the test client runs the view in it) grows by less than 200 MB while
the upload is handled. Peak RSS: psutil's RSS before, and the kernel's
high-water mark (VmHWM, reset through /proc/self/clear_refs) after.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import psutil
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
)

from apps.cases.models import Case, CaseImage, Prediction
from tests.conftest import IMAGES, stored_files, upload_of

MB = 1024 * 1024
HUGE = 20000  # what the forged codestreams declare: 20000 x 20000


def _testdata(name: str) -> Dataset:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return pydicom.dcmread(path)


def _dicom(pixel_data: bytes, syntax, *, rows=256, columns=256, bits=8) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID("2.25.1")
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "2.25.1"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixel_data
    if syntax.is_compressed:
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _fixture_jpeg() -> bytes:
    with Image.open(IMAGES / "2168a917.jpg") as image:
        gray = image.convert("L").resize((256, 256))
    buffer = io.BytesIO()
    gray.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _forge_sof(codestream: bytes, marker: bytes) -> bytes:
    """The codestream with its SOF (JPEG) or SOF55 (JPEG-LS) saying HUGE x HUGE."""
    at = codestream.index(marker)
    return codestream[: at + 5] + struct.pack(">HH", HUGE, HUGE) + codestream[at + 9 :]


def _forge_siz(codestream: bytes) -> bytes:
    """The J2K codestream with its SIZ saying HUGE x HUGE (no offsets)."""
    at = codestream.index(b"\xff\x4f\xff\x51") + 8  # Xsiz
    return codestream[:at] + struct.pack(">IIII", HUGE, HUGE, 0, 0) + codestream[at + 16 :]


def _one_fragment(ds: Dataset) -> bytes:
    return b"".join(list(generate_fragments(ds.PixelData))[1:])


def jpeg_lies() -> bytes:
    return _dicom(encapsulate([_forge_sof(_fixture_jpeg(), b"\xff\xc0")]), JPEGBaseline8Bit)


def jpeg_ls_lies() -> bytes:
    source = _testdata("MR_small_jpeg_ls_lossless.dcm")  # 64 x 64, 16 bits
    forged = _forge_sof(_one_fragment(source), b"\xff\xf7")
    return _dicom(encapsulate([forged]), JPEGLSLossless, rows=64, columns=64, bits=16)


def j2k_lies(syntax=JPEG2000Lossless) -> bytes:
    source = _testdata("MR_small_jp2klossless.dcm")  # 64 x 64, 16 bits
    forged = _forge_siz(_one_fragment(source))
    return _dicom(encapsulate([forged]), syntax, rows=64, columns=64, bits=16)


def jpeg_lies_in_second_codestream() -> bytes:
    """A true first codestream, then a second one (its own fragment) that lies."""
    honest = _fixture_jpeg()
    return _dicom(encapsulate([honest + _forge_sof(honest, b"\xff\xc0")]), JPEGBaseline8Bit)


def _repeated_deflate(block: bytes, times: int, *, wbits: int) -> bytes:
    """``block * times`` deflated, without deflating it ``times`` times: after a full
    flush the compressor starts afresh, so every block compresses to the same bytes."""
    first = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = first.compress(block) + first.flush(zlib.Z_FULL_FLUSH)
    body = zlib.compressobj(9, zlib.DEFLATED, -15)
    repeat = body.compress(block) + body.flush(zlib.Z_FULL_FLUSH)
    tail = body.flush()
    if wbits > 0:  # zlib format: the Adler-32 of everything follows
        adler = 1
        for _ in range(times):
            adler = zlib.adler32(block, adler)
        tail += struct.pack(">I", adler)
    return head + repeat * (times - 1) + tail


def deflate_bomb() -> bytes:
    """2 MB that inflates to 2 GB inside pydicom: a Deflated Explicit VR Little Endian
    file whose deflated dataset is 2 GB of zeros."""
    small = _dicom(b"\0" * 256 * 256, DeflatedExplicitVRLittleEndian)
    meta_end = 144 + struct.unpack("<I", small[140:144])[0]  # after the group length
    return small[:meta_end] + _repeated_deflate(bytes(16 * MB), 128, wbits=-15)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int, *, rows_per_block: int = 64) -> bytes:
    """An all-black RGB PNG of side x side pixels, a few hundred KB."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    row = b"\0" + bytes(3 * side)
    blocks, rest = divmod(side, rows_per_block)
    assert rest == 0
    data = _repeated_deflate(row * rows_per_block, blocks, wbits=15)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def png_declaring(side: int) -> bytes:
    """A PNG whose header says side x side RGB pixels, with one row of data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" + bytes(3 * side))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_bomb(side: int) -> bytes:
    """An all-black grayscale JPEG of side x side pixels (a few hundred KB)."""
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()


def tiff_bomb(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="TIFF", compression="tiff_adobe_deflate")
    return buffer.getvalue()


def _zip() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("inner/bomb.bin", bytes(8 * MB))
    return buffer.getvalue()


def zip_as_jpeg_fragment() -> bytes:
    return _dicom(encapsulate([_zip()]), JPEGBaseline8Bit)


def zip_as_pixel_data() -> bytes:
    archive = _zip()
    return _dicom(archive + b"\0" * (len(archive) % 2), ExplicitVRLittleEndian)


def fragment_cut_short() -> bytes:
    """The file ends inside its one fragment."""
    good = _dicom(encapsulate([_fixture_jpeg()]), JPEGBaseline8Bit)
    return good[: len(good) - 3000]


def codestream_cut_short() -> bytes:
    """A whole file whose one JPEG fragment stops half-way through the scan."""
    jpeg = _fixture_jpeg()
    return _dicom(encapsulate([jpeg[: len(jpeg) // 2]]), JPEGBaseline8Bit)


SIDE = 7744  # 60 M pixels is the limit: 7744^2 = 59.97 M, just under it

CORPUS = [
    ("sof.dcm", jpeg_lies, 400, f"JPEG pixel data declares a {HUGE}x{HUGE} image"),
    ("second.dcm", jpeg_lies_in_second_codestream, 400, f"declares a {HUGE}x{HUGE} image"),
    ("sof55.dcm", jpeg_ls_lies, 400, f"JPEG-LS pixel data declares a {HUGE}x{HUGE} image"),
    ("siz.dcm", j2k_lies, 400, f"JPEG 2000 pixel data declares a {HUGE}x{HUGE} image"),
    ("htj2k.dcm", lambda: j2k_lies(HTJ2KLossless), 400, f"declares a {HUGE}x{HUGE} image"),
    ("deflate.dcm", deflate_bomb, 413, "the deflated DICOM dataset inflates to more than"),
    ("huge.png", lambda: png_declaring(65535), 413, "the image is too large to decode safely"),
    ("black.png", lambda: png_bomb(SIDE), 400, "the image is blank"),
    ("black.jpg", lambda: jpeg_bomb(SIDE), 400, "the image is blank"),
    ("black.tif", lambda: tiff_bomb(SIDE), 415, "TIFF images are not accepted"),
    ("zip.dcm", zip_as_jpeg_fragment, 400, "does not start with a JPEG start-of-image"),
    ("zip2.dcm", zip_as_pixel_data, 400, "truncated or corrupt"),
    ("cut.dcm", fragment_cut_short, 400, "the DICOM file is truncated"),
    ("half.dcm", codestream_cut_short, 400, "JPEG pixel data is truncated"),
]


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    except OSError:
        return False
    return True


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize(("name", "build", "status", "message"), CORPUS, ids=[c[0] for c in CORPUS])
@pytest.mark.slow
def test_hostile_upload_is_refused_with_bounded_memory_and_nothing_stored(
    name, build, status, message, api_as, clinician, media_root
):
    content = build()
    assert len(content) < 4 * MB, len(content)  # small files: the bomb is in what they declare
    client = api_as("clinician")
    upload = upload_of(name, content, "application/octet-stream")
    if not _reset_peak():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    before = psutil.Process().memory_info().rss
    response = client.post("/api/v1/cases/", {"images": [upload]}, format="multipart")
    growth = _peak_rss() - before
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["message"].startswith(f"{name}: "), error
    assert message in error["message"], error
    assert growth < 200 * MB, f"peak RSS grew by {growth / MB:.0f} MB"
    print(f"\n{name}: {len(content) / 1024:.0f} KB, {status}, peak RSS +{growth / MB:.1f} MB")
    assert Case.objects.count() == CaseImage.objects.count() == Prediction.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_decoder_over_the_memory_ceiling_is_refused_not_the_web_process(
    api_as, clinician, media_root, settings
):
    """With the child's ceiling at 256 MB, decoding a 60 M-pixel RGB PNG (180 MB of
    pixels, then a float32 copy) runs out of memory in the child, not here."""
    settings.CXR_DECODE_MEMORY_MB = 256
    response = api_as("clinician").post(
        "/api/v1/cases/",
        {"images": [upload_of("black.png", png_bomb(SIDE), "image/png")]},
        format="multipart",
    )
    assert response.status_code == 413, response.content
    assert response.json()["error"]["message"] == (
        "black.png: decoding the image needs more than the 256 MB this server allows; "
        "it is refused."
    )
    assert Case.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_request_body_over_the_limit_is_refused_before_it_is_read(
    api_as, clinician, media_root, settings
):
    settings.CXR_MAX_REQUEST_BYTES = 64 * 1024
    response = api_as("clinician").post(
        "/api/v1/cases/",
        {"images": [upload_of(name) for name in ["IM-0117-0001.jpeg", "2168a917.jpg"] * 3]},
        format="multipart",
    )
    assert response.status_code == 413, response.content
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert error["message"].startswith("The request body is ")
    assert "the limit is 65536 bytes (CXR_MAX_REQUEST_BYTES)" in error["message"]
    assert Case.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_file_over_the_limit_stops_the_upload_on_the_web_form_too(
    client, clinician, media_root, settings
):
    settings.CXR_MAX_UPLOAD_BYTES = 4096
    client.force_login(clinician)
    response = client.post(
        "/cases/new/",
        {"images": [upload_of("2168a917.jpg")]},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 413, response.content
    assert response.json()["files"] == [
        {
            "name": "2168a917.jpg",
            "problem": "the file is more than 4096 bytes (the upload stopped there); "
            "the limit is 4096 bytes.",
        }
    ]
    assert Case.objects.count() == 0
    assert stored_files(media_root) == []


def test_the_frame_check_accepts_real_grayscale_compressed_files():
    """pydicom's single-frame grayscale JPEG, JPEG-LS and JPEG 2000 files pass."""
    from ml.data.dicom import check_image

    for name in (
        "JPGExtended.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm", "JPEG-lossy.dcm", "JPEGLSNearLossless_08.dcm",
    ):  # fmt: skip
        ds = _testdata(name)
        info = check_image(ds, max_pixels=60_000_000)
        assert (info.rows, info.columns) == (ds.Rows, ds.Columns), name


def test_sixteen_bit_dicom_gray_is_float32_without_a_float64_copy():
    from ml.data.dicom import read_dataset, to_unit_gray
    from tests.cases.test_input_safety import make_dicom

    gray = to_unit_gray(read_dataset(make_dicom(slope=2.0, intercept=-10.0)))
    assert gray.dtype == np.float32
    assert 0.0 <= float(gray.min()) < float(gray.max()) <= 1.0

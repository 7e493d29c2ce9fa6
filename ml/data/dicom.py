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
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO

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


# What a Deflated Explicit VR Little Endian dataset may inflate to: the pixel data
# of the largest accepted image at 16 bits, plus the rest of a header.
DEFAULT_MAX_INFLATED = 2 * 60_000_000 + 16 * 1024 * 1024


def read_dataset(source: bytes | BinaryIO, *, max_inflated: int = DEFAULT_MAX_INFLATED) -> Dataset:
    """Parse a DICOM Part 10 file (header and pixel data bytes, nothing decoded yet).

    A deflated dataset is first inflated into nothing, counting, and refused
    when it grows past ``max_inflated`` bytes (pydicom inflates it whole, with
    no limit: 1 MB of deflate makes 1 GB).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every small deviation
            _check_inflated_size(stream, max_inflated)
            dataset = pydicom.dcmread(stream)
            # Touch every element now: a truncated or mangled header fails
            # here, inside this try, not later while de-identifying.
            for _ in dataset.iterall():
                pass
        if "PixelData" not in dataset and _has_pixel_data_tag(stream):
            # pydicom drops an encapsulated Pixel Data element the file ends inside.
            raise DicomProblem("the DICOM file is truncated (its pixel data is cut short).")
    except DicomProblem:
        raise
    except InvalidDicomError:
        raise DicomProblem("the file is not a valid DICOM file.") from None
    except RecursionError:  # pydicom reads nested sequences recursively
        raise DicomProblem(
            "the DICOM header nests sequences more deeply than this platform reads; "
            "export the image without them."
        ) from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise DicomProblem(f"the DICOM file is truncated or corrupt ({_short(exc)}).") from None
    return dataset


def _has_pixel_data_tag(stream: BinaryIO) -> bool:
    stream.seek(0)
    return b"\xe0\x7f\x10\x00OB" in stream.read()


def _check_inflated_size(stream: BinaryIO, max_inflated: int) -> None:
    """Refuse a Deflated Explicit VR Little Endian dataset that inflates past the limit."""
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    start = stream.tell()
    read_preamble(stream, False)
    meta = _read_file_meta_info(stream)
    if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflated = 0
        while chunk := stream.read(1024 * 1024):
            while chunk:
                try:
                    inflated += len(inflater.decompress(chunk, 4 * 1024 * 1024))
                except zlib.error as exc:
                    raise DicomProblem(
                        f"the deflated DICOM dataset is corrupt ({_short(exc)})."
                    ) from None
                if inflated > max_inflated:
                    raise DicomProblem(
                        "the deflated DICOM dataset inflates to more than "
                        f"{max_inflated // (1024 * 1024)} MB; it is refused unread.",
                        kind="too_large",
                    )
                chunk = inflater.unconsumed_tail
    stream.seek(start)


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


# -- CT slices ---------------------------------------------------------------------------

XRAY_MODALITIES = {"CR", "DX"}
# The lung window (centre, width) in Hounsfield units: what a CT slice is shown and
# segmented with when the header has no lung window of its own.
LUNG_WINDOW = (-600.0, 1500.0)


def header_modality(dataset: Dataset) -> str:
    """The header's Modality (upper case; empty when missing)."""
    return str(dataset.get("Modality") or "").strip().upper()


def route_modality(dataset: Dataset, marked: str) -> tuple[str, str]:
    """(modality, source) of a DICOM upload marked ``marked`` ("xray" or "ct"): its
    header's Modality decides where it says CT or an X-ray modality ("header"), else
    the mark stands ("marked"); a header that says X-ray, or another modality,
    contradicts a CT mark (refused)."""
    said = header_modality(dataset)
    if said == "CT":
        return "ct", "header"
    if marked == "ct" and said in XRAY_MODALITIES:
        raise DicomProblem(
            f"the DICOM file is a radiograph (Modality {said}), but the upload is marked CT; "
            "upload it as an X-ray."
        )
    if marked == "ct" and said in NOT_RADIOGRAPHS:
        raise DicomProblem(
            f"the DICOM file is {NOT_RADIOGRAPHS[said]} (Modality {said}), not a CT slice; "
            "upload axial chest CT slices."
        )
    return (marked, "header") if said in XRAY_MODALITIES else (marked, "marked")


def burned_in_problem(dataset: Dataset) -> str | None:
    """The refusal of a file whose header says patient details are burned into the image."""
    if str(dataset.get("BurnedInAnnotation") or "").strip().upper() == "YES":
        return (
            "the DICOM says patient details are burned into the image (Burned In "
            "Annotation = YES); export the image without them."
        )
    return None


def ct_problem(dataset: Dataset) -> str | None:
    """Why a CT DICOM cannot be read as one axial chest slice, from its header, or None.

    A multi-frame file (a whole volume, or an enhanced CT object) is refused, not cut
    to its middle slice: which slice shows the lungs is the clinician's choice, and a
    volume decoded whole would cost far more memory than a slice. A Body Part Examined
    that names no part of the chest is refused too (a missing one is not).
    """
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        return (
            f"the DICOM file is a CT volume of {frames} slices (a multi-frame image); this "
            "platform reads single axial slices. Export the slices you want read as "
            "single-frame DICOM (or PNG) files and upload those; a case holds several."
        )
    body_part = str(dataset.get("BodyPartExamined") or "").strip().upper().replace(" ", "_")
    if body_part and not any(word in body_part for word in ("CHEST", "THORAX", "LUNG")):
        return (
            f"the DICOM file is a CT of the {body_part.lower().replace('_', ' ')} (Body Part "
            "Examined), not of the chest; upload axial chest CT slices."
        )
    return None


def _windows(dataset: Dataset) -> list[tuple[float, float]]:
    """The header's (centre, width) pairs (Window Center/Width may hold several)."""
    if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        return []

    def values(element: Any) -> list[float]:
        if isinstance(element, str | bytes) or not isinstance(element, Iterable):
            return [float(element)]
        return [float(v) for v in element]

    try:
        centres, widths = values(dataset.WindowCenter), values(dataset.WindowWidth)
    except (TypeError, ValueError):
        return []
    return [(c, w) for c, w in zip(centres, widths, strict=False) if w > 0]


def ct_window(dataset: Dataset) -> tuple[float, float, str]:
    """(centre, width, what) of the window a CT slice is shown with.

    With Hounsfield units (Rescale Slope and Intercept present): the header's lung
    window when it has one (a centre at or below -300 HU, a width of at least 800), else
    the lung window W1500/L-600 (a header window is often the soft-tissue one, in which
    the lungs are black). Without them: the header's first window, else none (the
    caller then scales the slice's own minimum to maximum, to 8 bits).
    """
    windows = _windows(dataset)
    has_hu = dataset.get("RescaleSlope") is not None and dataset.get("RescaleIntercept") is not None
    if has_hu:
        for centre, width in windows:
            if centre <= -300 and width >= 800:
                return centre, width, f"the header's lung window (W{width:g}/L{centre:g})"
        centre, width = LUNG_WINDOW
        return centre, width, f"the lung window (W{width:g}/L{centre:g} HU)"
    if windows:
        centre, width = windows[0]
        return centre, width, f"the header's window (W{width:g}/L{centre:g}; no rescale to HU)"
    return 0.0, 0.0, "the slice's own range (no rescale to HU, no window)"


def ct_to_unit_gray(dataset: Dataset) -> tuple[np.ndarray, str]:
    """A CT slice's pixels as float32 in [0, 1] through :func:`ct_window`, and which
    window was used (for the log). MONOCHROME1 is inverted like any DICOM image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = np.asarray(dataset.pixel_array, dtype=np.float32)
            slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
            if slope is not None and intercept is not None:
                values *= np.float32(slope)
                values += np.float32(intercept)
    except Exception as exc:
        raise DicomProblem(
            f"the DICOM pixel data is truncated or corrupt ({_short(exc)})."
        ) from None
    if values.ndim != 2:
        raise DicomProblem("the DICOM pixel data is not a single 2-D image.", kind="unsupported")
    if not np.all(np.isfinite(values)):
        raise DicomProblem("the DICOM pixel data holds invalid values.")
    centre, width, what = ct_window(dataset)
    if width > 0:
        low, high = centre - width / 2.0, centre + width / 2.0
    else:
        low, high = float(values.min()), float(values.max())
    if high > low:
        values -= np.float32(low)
        values /= np.float32(high - low)
        np.clip(values, 0.0, 1.0, out=values)
    else:
        values[...] = 0.0
    if str(dataset.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        np.subtract(np.float32(1.0), values, out=values)
    return values, what


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
    check_frame_size(dataset, rows=rows, columns=columns)
    return DicomImageInfo(rows, columns, photometric, bits_stored, syntax.name)


# -- frame sizes declared inside compressed pixel data ------------------------------
#
# A decoder allocates what the codestream's own frame header declares, not what
# Rows/Columns say. So before any pixels are decoded, the frame header of every
# codestream in the pixel data is read here (plain Python, a walk over marker
# segments, nothing decoded) and must agree with the header: one component,
# Rows x Columns.

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_JPEG_HIERARCHICAL = {0xC5, 0xC6, 0xC7, 0xCD, 0xCE, 0xCF, 0xDE}  # differential SOFs, DHP
_JPEG_NO_LENGTH = {0x01, 0xD8, 0xD9, *range(0xD0, 0xD8)}  # TEM, SOI, EOI, RSTn
_J2K_SOC, _J2K_SIZ, _J2K_SOT, _J2K_EOC = b"\xff\x4f", b"\xff\x51", b"\xff\x90", b"\xff\xd9"
_JP2_SIGNATURE = b"\x00\x00\x00\x0c\x6a\x50\x20\x20"


@dataclass(frozen=True)
class FrameHeader:
    """What one codestream's frame header (JPEG SOF, JPEG-LS SOF55, J2K SIZ) declares."""

    columns: int
    rows: int
    components: int


def _u16(data: bytes, at: int) -> int:
    if at + 2 > len(data):
        raise DicomProblem("the compressed pixel data is truncated (a marker segment is cut).")
    return int.from_bytes(data[at : at + 2], "big")


def _u32(data: bytes, at: int) -> int:
    if at + 4 > len(data):
        raise DicomProblem("the compressed pixel data is truncated (a marker segment is cut).")
    return int.from_bytes(data[at : at + 4], "big")


def jpeg_frame_headers(
    data: bytes, *, start: int = 0, jpeg_ls: bool = False, first_only: bool = False
) -> list[FrameHeader]:
    """Every frame header (SOF) of the JPEG or JPEG-LS codestreams in ``data[start:]``
    (only the first with ``first_only``).

    Walks marker segments by their lengths and the entropy-coded data by its
    byte stuffing (JPEG: FF00; JPEG-LS: FF followed by a byte under 0x80), so
    bytes inside APPn segments (an EXIF thumbnail) or coded data are never
    taken for a marker. Refuses what could make a decoder allocate more than the
    SOF says: hierarchical JPEG, a height set later by DNL, JPEG-LS oversize
    dimensions (LSE id 4).
    """
    if data[start : start + 2] != b"\xff\xd8":
        raise DicomProblem("the JPEG pixel data does not start with a JPEG start-of-image marker.")
    headers: list[FrameHeader] = []
    raw, end, pos, ended = data, len(data), start, False
    while True:
        ff = raw.find(b"\xff", pos)
        if ff < 0 or ff + 1 >= end:
            break
        code = raw[ff + 1]
        if code == 0xFF:  # fill byte before a marker
            pos = ff + 1
            continue
        if code == 0x00 or (jpeg_ls and code < 0x80) or code in _JPEG_NO_LENGTH:
            pos = ff + 2  # stuffed coded data, or a marker without a segment
            ended = {0xD8: False, 0xD9: True}.get(code, ended)  # SOI, EOI
            continue
        length = _u16(raw, ff + 2)
        if length < 2 or ff + 2 + length > end:
            raise DicomProblem("the JPEG pixel data is truncated or corrupt (a marker segment "
                               "runs past the end).")  # fmt: skip
        segment = raw[ff + 4 : ff + 2 + length]
        _refuse_unchecked_size(code, segment, jpeg_ls=jpeg_ls)
        if code in _JPEG_SOF:
            if len(segment) < 6:
                raise DicomProblem("the JPEG pixel data has a truncated frame header.")
            headers.append(FrameHeader(_u16(segment, 3), _u16(segment, 1), segment[5]))
            if first_only:
                break
        pos = ff + 2 + length
    if not headers:
        raise DicomProblem("the JPEG pixel data has no frame header (SOF marker).")
    if not (ended or first_only):  # a decoder would fill the missing rest with gray
        raise DicomProblem("the JPEG pixel data is truncated (it has no end-of-image marker).")
    return headers


def _refuse_unchecked_size(code: int, segment: bytes, *, jpeg_ls: bool) -> None:
    """JPEG markers that size the image elsewhere than in the SOF."""
    if code in _JPEG_HIERARCHICAL:
        raise DicomProblem(
            "the JPEG pixel data is hierarchical JPEG, which no radiograph export uses.",
            kind="unsupported",
        )
    if code == 0xDC:
        raise DicomProblem(
            "the JPEG pixel data sets its number of lines later (DNL marker); "
            "it cannot be checked before decoding.",
            kind="unsupported",
        )
    if jpeg_ls and code == 0xF8 and segment[:1] == b"\x04":
        raise DicomProblem(
            "the JPEG-LS pixel data declares oversize dimensions (LSE marker); "
            "it cannot be checked before decoding.",
            kind="unsupported",
        )


def j2k_frame_headers(
    data: bytes, *, start: int = 0, first_only: bool = False
) -> list[FrameHeader]:
    """The image size (SIZ) of every JPEG 2000 / HTJ2K codestream in ``data[start:]``
    (only the first with ``first_only``).

    A JP2 file wrapper, which DICOM does not allow but decoders accept, is
    unwrapped to its codestream box. After the first codestream (walked by its
    main header segments and its tile-parts' lengths, Psot) any codestream
    that follows is read too.
    """
    end, pos = len(data), _jp2_codestream_start(data, start)
    headers: list[FrameHeader] = []
    while pos + 4 <= end and data[pos : pos + 2] == _J2K_SOC:
        if data[pos + 2 : pos + 4] != _J2K_SIZ:
            raise DicomProblem("the JPEG 2000 pixel data has no image size (SIZ) after its start.")
        siz = pos + 6
        xsiz, ysiz, xosiz, yosiz = (_u32(data, siz + 2 + 4 * i) for i in range(4))
        components = _u16(data, siz + 34)
        if xosiz >= xsiz or yosiz >= ysiz:
            raise DicomProblem("the JPEG 2000 pixel data declares an empty image.")
        headers.append(FrameHeader(xsiz - xosiz, ysiz - yosiz, components))
        if first_only:
            break
        pos = _j2k_codestream_end(data, pos + 4 + _u16(data, pos + 4))  # from past SIZ
    if not headers:
        raise DicomProblem("the JPEG 2000 pixel data does not start with a JPEG 2000 codestream.")
    return headers


def _jp2_codestream_start(data: bytes, start: int) -> int:
    """Where the codestream starts: ``start``, or inside the JP2 wrapper's jp2c box."""
    if data[start : start + 8] != _JP2_SIGNATURE:
        return start
    box = start
    while box + 8 <= len(data) and data[box + 4 : box + 8] != b"jp2c":
        length = _u32(data, box)
        if length == 1:
            length = int.from_bytes(data[box + 8 : box + 16], "big")
        if length < 8:
            raise DicomProblem("the JPEG 2000 pixel data has a corrupt JP2 box.")
        box += length
    return box + 8


def _j2k_codestream_end(data: bytes, pos: int) -> int:
    """Past the EOC of the codestream whose main header continues at ``pos``: its
    header segments by their lengths, then its tile-parts by their lengths (Psot)."""
    end = len(data)
    while pos + 2 <= end:
        marker = data[pos : pos + 2]
        if marker == _J2K_EOC:
            return pos + 2
        if marker == _J2K_SOT:
            tile_part = _u32(data, pos + 6)  # Psot; 0: the last tile-part, to the end
            pos = end if tile_part == 0 else pos + tile_part
            continue
        if marker[0] != 0xFF:
            raise DicomProblem("the JPEG 2000 pixel data is corrupt (no marker where one must be).")
        pos += 2 + _u16(data, pos + 2)
    return pos


def check_frame_size(dataset: Dataset, *, rows: int, columns: int) -> None:
    """Refuse compressed pixel data whose codestreams declare another size than the header.

    The frame built from all fragments is walked whole (every codestream in it),
    and any later fragment that starts a codestream of its own is read as well.
    """
    from pydicom import uid
    from pydicom.encaps import generate_fragments

    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax in uid.JPEG2000TransferSyntaxes:
        family, read = "JPEG 2000", j2k_frame_headers
    elif syntax in uid.JPEGLSTransferSyntaxes:
        family, read = "JPEG-LS", partial(jpeg_frame_headers, jpeg_ls=True)
    elif syntax in uid.JPEGTransferSyntaxes:
        family, read = "JPEG", jpeg_frame_headers
    else:
        return
    try:
        fragments = list(generate_fragments(dataset.PixelData))[1:]  # after the offset table
    except (ValueError, TypeError, EOFError, KeyError) as exc:
        raise DicomProblem(
            f"the compressed pixel data is not correctly encapsulated ({_short(exc)})."
        ) from None
    if not fragments:
        raise DicomProblem("the compressed pixel data holds no fragments.")
    frame = b"".join(fragments)
    headers = read(frame)
    start = len(fragments[0])
    for fragment in fragments[1:]:
        if fragment[:2] in (b"\xff\xd8", _J2K_SOC) or fragment[:8] == _JP2_SIGNATURE:
            headers += read(frame, start=start, first_only=True)
        start += len(fragment)
    for header in headers:
        if header.components != 1:
            raise DicomProblem(
                f"the {family} pixel data declares {header.components} colour components but "
                "the DICOM header says one (grayscale); the file is inconsistent."
            )
        if (header.columns, header.rows) != (columns, rows):
            raise DicomProblem(
                f"the {family} pixel data declares a {header.columns}x{header.rows} image but "
                f"the DICOM header says {columns}x{rows}; the file is inconsistent and is "
                "refused before decoding."
            )


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
            if dataset.get("ModalityLUTSequence"):
                values = apply_modality_lut(raw, dataset)
            else:  # pydicom's rescale, in float32 (its own makes a float64 copy)
                values = raw.astype(np.float32)
                del raw
                slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
                if slope is not None and intercept is not None:
                    values *= np.float32(slope)
                    values += np.float32(intercept)
            has_voi = bool(dataset.get("VOILUTSequence")) or (
                "WindowCenter" in dataset and "WindowWidth" in dataset
            )
            if has_voi:  # pydicom windows in float64: this runs in the bounded decoder
                values = apply_voi_lut(values, dataset, index=0)
            values = np.asarray(values, dtype=np.float32)
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
    if high > low:  # in place: one float32 image, no further copies
        values -= np.float32(low)
        values /= np.float32(high - low)
        np.clip(values, 0.0, 1.0, out=values)
    else:
        values[...] = 0.0
    if str(dataset.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        np.subtract(np.float32(1.0), values, out=values)
    return values


def to_uint8(gray: np.ndarray) -> np.ndarray:
    """The 8-bit rendition stored for display and inference (the model trains on 8-bit)."""
    rendition: np.ndarray = np.round(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8)
    return rendition


def open_dicom_as_image(
    source: str | bytes | BinaryIO, *, max_pixels: int = 60_000_000
) -> Image.Image:
    """A DICOM file as an 8-bit grayscale PIL image (for ``python -m ml classifier predict``)."""
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

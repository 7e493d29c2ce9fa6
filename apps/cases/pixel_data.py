"""Pixel data with nothing in it but the image: what de-identification keeps of it.

A compressed DICOM frame is a codestream that may carry text of its own: a JPEG's
COM segment or APPn blocks (EXIF with a patient's name, birth date and MRN, XMP,
a JFIF thumbnail), a JPEG 2000 comment (COM) or, in a JP2 wrapper, XML and UUID
boxes, and whatever bytes follow the end of the codestream. Decoders skip all of
that, so it is invisible on screen and survives an attribute-level
de-identification. ``clean_pixel_data`` rewrites every frame with only the
segments that decoding needs (the entropy-coded data are copied byte for byte, so
the image decodes to exactly the same pixels) and refuses, with
:class:`~ml.data.dicom.DicomProblem`, what it cannot clean:

- JPEG (baseline, extended, lossless): SOI, SOFn, DHT, DAC, DQT, DRI, SOS and its
  scan data (with RSTn), EOI; APPn, COM and TEM go, and so does anything after EOI;
- JPEG-LS: the same, with its SOF55 and LSE segments (and its own byte stuffing);
- JPEG 2000 and HTJ2K: SOC, the main header's coding segments (SIZ, CAP, COD, COC,
  QCD, QCC, RGN, POC, PPM, PLM, CRG, CPF), each tile-part (SOT with its length
  recomputed, its header's coding segments, SOD, its data), EOC; COM goes, and TLM
  (tile-part lengths, an optional index the rewrite would make wrong). A JP2
  wrapper (which DICOM does not allow) is replaced by its codestream, unless its
  header holds a palette or channel definitions, which the codestream alone would
  decode differently: that is refused;
- RLE Lossless: its segment table can hide bytes (unused offsets, gaps, data past a
  segment's end), so the frame is decoded and encoded again, losslessly;
- native (uncompressed) pixel data: bytes past the image's own size are cut;
- any other encapsulated transfer syntax, and any marker segment not listed above
  (reserved JPEG markers, JPEG 2000 Part 2 extensions): refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ml.data.dicom import DicomProblem

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

CANNOT_CLEAN = (
    "the {what} may hold text that cannot be removed without changing the image, "
    "so it cannot be de-identified; export it uncompressed or as baseline JPEG, "
    "JPEG-LS or JPEG 2000."
)


def _refuse(what: str) -> DicomProblem:
    return DicomProblem(CANNOT_CLEAN.format(what=what), kind="unsupported")


def _u16(data: bytes, at: int) -> int:
    if at + 2 > len(data):
        raise DicomProblem("the compressed pixel data is truncated (a marker segment is cut).")
    return int.from_bytes(data[at : at + 2], "big")


def _u32(data: bytes, at: int) -> int:
    if at + 4 > len(data):
        raise DicomProblem("the compressed pixel data is truncated (a marker segment is cut).")
    return int.from_bytes(data[at : at + 4], "big")


# -- JPEG and JPEG-LS ----------------------------------------------------------------

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
# Frame headers (non-hierarchical), DHT, DAC, DQT, DRI: what a decoder reads.
JPEG_CODING = {0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB, 0xC4, 0xCC, 0xDB, 0xDD, _SOS}
JPEG_LS_CODING = {0xF7, 0xF8, 0xC4, 0xDB, 0xDD, _SOS}  # SOF55, LSE (+ what LS allows)
JPEG_TEXT = {*range(0xE0, 0xF0), 0xFE}  # APP0-APP15, COM
_RST = range(0xD0, 0xD8)


def clean_jpeg(frame: bytes, *, jpeg_ls: bool = False) -> bytes:
    """The first JPEG (or JPEG-LS) codestream of ``frame`` with only its coding segments."""
    if frame[:2] != b"\xff\xd8":
        raise DicomProblem("the JPEG pixel data does not start with a JPEG start-of-image marker.")
    keep = JPEG_LS_CODING if jpeg_ls else JPEG_CODING
    out = [b"\xff\xd8"]
    pos, end = 2, len(frame)
    while True:
        if pos + 1 >= end:
            raise DicomProblem("the JPEG pixel data is truncated (it has no end-of-image marker).")
        if frame[pos] != 0xFF:
            raise DicomProblem("the JPEG pixel data is corrupt (no marker where one must be).")
        code = frame[pos + 1]
        if code == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if code == _EOI:
            out.append(b"\xff\xd9")
            return b"".join(out)  # what follows the end of the image is not kept
        if code == 0x01:  # TEM: no segment, nothing a decoder needs
            pos += 2
            continue
        length = _u16(frame, pos + 2)
        if length < 2 or pos + 2 + length > end:
            raise DicomProblem("the JPEG pixel data is truncated or corrupt (a marker segment "
                               "runs past the end).")  # fmt: skip
        segment_end = pos + 2 + length
        if code in JPEG_TEXT:
            pos = segment_end
            continue
        if code not in keep:
            raise _refuse(f"JPEG pixel data has a segment (marker FF{code:02X})")
        out.append(frame[pos:segment_end])
        pos = segment_end
        if code == _SOS:
            scan_end = _scan_end(frame, pos, jpeg_ls=jpeg_ls)
            out.append(frame[pos:scan_end])
            pos = scan_end


def _scan_end(frame: bytes, pos: int, *, jpeg_ls: bool) -> int:
    """Where the entropy-coded data starting at ``pos`` end: at the first marker that is
    not a restart marker (JPEG stuffs FF00 into the data; JPEG-LS an FF followed by a
    byte under 0x80)."""
    end = len(frame)
    while True:
        ff = frame.find(b"\xff", pos)
        if ff < 0 or ff + 1 >= end:
            raise DicomProblem("the JPEG pixel data is truncated (it has no end-of-image marker).")
        following = frame[ff + 1]
        if following == 0x00 or (jpeg_ls and following < 0x80) or following in _RST:
            pos = ff + 2
        elif following == 0xFF:
            pos = ff + 1
        else:
            return ff


# -- JPEG 2000 ------------------------------------------------------------------------

_SOC, _SOT, _SOD, _EOC = b"\xff\x4f", b"\xff\x90", b"\xff\x93", b"\xff\xd9"
_JP2_SIGNATURE = b"\x00\x00\x00\x0c\x6a\x50\x20\x20"
_J2K_COM, _J2K_TLM = 0x64, 0x55
# Main header: CAP, SIZ, COD, COC, PLM, CPF, QCD, QCC, RGN, POC, PPM, CRG.
J2K_MAIN_CODING = {0x50, 0x51, 0x52, 0x53, 0x57, 0x59, 0x5C, 0x5D, 0x5E, 0x5F, 0x60, 0x63}
# Tile-part header: COD, COC, PLT, QCD, QCC, RGN, POC, PPT.
J2K_TILE_CODING = {0x52, 0x53, 0x58, 0x5C, 0x5D, 0x5E, 0x5F, 0x61}
# JP2 header boxes without which the codestream decodes differently.
JP2_DECODING_BOXES = {b"pclr", b"cmap", b"cdef"}


def clean_j2k(frame: bytes) -> bytes:
    """The first JPEG 2000 / HTJ2K codestream of ``frame`` with only its coding segments
    (out of a JP2 wrapper, if it has one)."""
    data = _jp2_codestream(frame) if frame[:8] == _JP2_SIGNATURE else frame
    if data[:2] != _SOC:
        raise DicomProblem("the JPEG 2000 pixel data does not start with a JPEG 2000 codestream.")
    out = [_SOC]
    pos = 2
    while data[pos : pos + 2] != _SOT:
        code, segment_end = _j2k_segment(data, pos)
        if code not in (_J2K_COM, _J2K_TLM):
            if code not in J2K_MAIN_CODING:
                raise _refuse(f"JPEG 2000 pixel data has a segment (marker FF{code:02X})")
            out.append(data[pos:segment_end])
        pos = segment_end
    while data[pos : pos + 2] == _SOT:
        tile_part, pos = _clean_tile_part(data, pos)
        out.append(tile_part)
    if data[pos : pos + 2] != _EOC:
        raise DicomProblem("the JPEG 2000 pixel data is truncated (no end-of-codestream marker).")
    out.append(_EOC)
    return b"".join(out)  # what follows the end of the codestream is not kept


def _j2k_segment(data: bytes, pos: int) -> tuple[int, int]:
    """(marker code, end) of the marker segment at ``pos``."""
    if pos + 4 > len(data) or data[pos] != 0xFF:
        raise DicomProblem("the JPEG 2000 pixel data is corrupt (no marker where one must be).")
    end = pos + 2 + _u16(data, pos + 2)
    if end > len(data):
        raise DicomProblem("the JPEG 2000 pixel data is truncated (a marker segment is cut).")
    return data[pos + 1], end


def _clean_tile_part(data: bytes, pos: int) -> tuple[bytes, int]:
    """One tile-part starting at ``pos`` (its SOT) without comments, and where it ends."""
    if _u16(data, pos + 2) != 10:
        raise DicomProblem("the JPEG 2000 pixel data has a corrupt tile-part header (SOT).")
    psot = _u32(data, pos + 6)
    header, at = [], pos + 12
    while data[at : at + 2] != _SOD:
        code, segment_end = _j2k_segment(data, at)
        if code != _J2K_COM:
            if code not in J2K_TILE_CODING:
                raise _refuse(f"JPEG 2000 pixel data has a tile-part segment (marker FF{code:02X})")
            header.append(data[at:segment_end])
        at = segment_end
    body_start = at + 2
    # Psot 0: the last tile-part, to the end of the codestream (no FFD9 in packet data).
    end = pos + psot if psot else data.find(_EOC, body_start)
    if end < body_start or end > len(data):
        raise DicomProblem("the JPEG 2000 pixel data is truncated (a tile-part is cut).")
    body = data[body_start:end]
    kept = b"".join(header)
    length = 0 if psot == 0 else 12 + len(kept) + 2 + len(body)
    sot = _SOT + data[pos + 2 : pos + 6] + length.to_bytes(4, "big") + data[pos + 10 : pos + 12]
    return sot + kept + _SOD + body, end


def _jp2_codestream(frame: bytes) -> bytes:
    """The codestream in a JP2 file's jp2c box; refused when its header has boxes the
    codestream's decoding depends on."""
    pos, end = 0, len(frame)
    while pos + 8 <= end:
        length, kind = _u32(frame, pos), frame[pos + 4 : pos + 8]
        header = 8
        if length == 1:
            length, header = int.from_bytes(frame[pos + 8 : pos + 16], "big"), 16
        elif length == 0:
            length = end - pos
        if length < header or pos + length > end:
            raise DicomProblem("the JPEG 2000 pixel data has a corrupt JP2 box.")
        content = frame[pos + header : pos + length]
        if kind == b"jp2h" and _jp2_has_decoding_boxes(content):
            raise _refuse("JPEG 2000 pixel data (a JP2 file with a palette or channel boxes)")
        if kind == b"jp2c":
            return content
        pos += length
    raise DicomProblem("the JPEG 2000 pixel data is a JP2 file without a codestream.")


def _jp2_has_decoding_boxes(content: bytes) -> bool:
    pos = 0
    while pos + 8 <= len(content):
        length = _u32(content, pos)
        if content[pos + 4 : pos + 8] in JP2_DECODING_BOXES:
            return True
        if length < 8:
            return False
        pos += length
    return False


# -- the dataset ----------------------------------------------------------------------


def clean_pixel_data(dataset: Dataset) -> None:
    """Rewrite ``dataset``'s pixel data in place so it holds the image and nothing else
    (see the module docstring); raise ``DicomProblem`` for what cannot be cleaned."""
    from pydicom import uid
    from pydicom.encaps import encapsulate, generate_frames

    if "PixelData" not in dataset:
        return
    syntax = dataset.file_meta.TransferSyntaxUID
    if not syntax.is_encapsulated:
        _trim_native(dataset)
        return
    if syntax == uid.RLELossless:
        _reencode_rle(dataset)
        return
    if syntax in uid.JPEG2000TransferSyntaxes:
        clean = clean_j2k
    elif syntax in uid.JPEGLSTransferSyntaxes:

        def clean(frame: bytes) -> bytes:
            return clean_jpeg(frame, jpeg_ls=True)

    elif syntax in uid.JPEGTransferSyntaxes:
        clean = clean_jpeg
    else:
        raise _refuse(f"pixel data in {syntax.name}")
    frames = int(dataset.get("NumberOfFrames") or 1)
    try:
        encoded = list(generate_frames(dataset.PixelData, number_of_frames=frames))
    except (ValueError, TypeError, EOFError, KeyError):
        raise DicomProblem("the compressed pixel data is not correctly encapsulated.") from None
    cleaned = [clean(frame) for frame in encoded]
    if len(cleaned) != frames:
        raise DicomProblem(f"the compressed pixel data holds {len(cleaned)} frames, not {frames}.")
    _set_encapsulated(dataset, encapsulate(cleaned, has_bot=frames > 1))


def _set_encapsulated(dataset: Dataset, value: bytes) -> None:
    dataset.PixelData = value
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in dataset:  # offsets into the frames as they were
            del dataset[keyword]


def _reencode_rle(dataset: Dataset) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.pixels.encoders import RLELosslessEncoder

    frames = int(dataset.get("NumberOfFrames") or 1)
    pixels = dataset.pixel_array
    options: dict[str, Any] = {
        "rows": int(dataset.Rows),
        "columns": int(dataset.Columns),
        "samples_per_pixel": int(dataset.SamplesPerPixel),
        "bits_allocated": int(dataset.BitsAllocated),
        "bits_stored": int(dataset.get("BitsStored") or dataset.BitsAllocated),
        "pixel_representation": int(dataset.get("PixelRepresentation") or 0),
        "photometric_interpretation": str(dataset.PhotometricInterpretation),
        "number_of_frames": frames,
        "planar_configuration": int(dataset.get("PlanarConfiguration") or 0),
    }
    try:
        encoded = [
            RLELosslessEncoder.encode(pixels, index=index if frames > 1 else None, **options)
            for index in range(frames)
        ]
    except (AttributeError, ValueError, RuntimeError, TypeError):
        raise _refuse("RLE pixel data (it could not be encoded again)") from None
    _set_encapsulated(dataset, encapsulate(encoded, has_bot=frames > 1))


def _trim_native(dataset: Dataset) -> None:
    """Cut uncompressed pixel data to the image's own size (even-padded): decoders
    ignore what follows it, so it could hold anything."""
    try:
        bits = int(dataset.BitsAllocated)
        count = (
            int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel") or 1)
            * int(dataset.get("NumberOfFrames") or 1)
        )  # fmt: skip
    except (AttributeError, TypeError, ValueError):
        raise DicomProblem(
            "the DICOM image description (rows, columns, bits) is missing or invalid."
        ) from None
    size = (count * bits + 7) // 8
    value = dataset.PixelData
    if len(value) > size + size % 2:
        dataset.PixelData = value[:size] + b"\x00" * (size % 2)

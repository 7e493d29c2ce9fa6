"""De-identify an upload before anything of it is stored.

**DICOM** (``deidentify``): an allow-list, not a deny-list. Of the uploaded
dataset only what the platform needs is kept (``KEEP``): the image pixel
module, the modality / VOI / presentation LUT attributes, Modality,
BodyPartExamined, ViewPosition, the SOP Class, the study, series, instance and
frame-of-reference UIDs (replaced), the study, series, acquisition and content
dates and times (shifted), the patient's name and ID (replaced by the
pseudonym) and the attributes that record the de-identification. Everything
else goes: every other public attribute, private attributes, overlays and
curves, and every attribute of a kept sequence item but the LUT's own data.
This is stricter than the PS3.15 Annex E Basic Application Level
Confidentiality Profile with the *Retain Longitudinal Temporal Information with
Modified Dates* option, which it records having applied:

- the patient's name and ID become a pseudonym, a keyed hash (HMAC-SHA256 with
  ``CXR_PSEUDONYM_KEY``) of the original patient ID, so the same patient gets
  the same reference without the ID being stored anywhere ("" without an ID);
- UIDs are replaced by new ones derived from the same key, consistently within
  and across uploads (a study's images stay one study);
- dates and times move back together by one offset of 1 to 3650 days plus
  1 to 86399 seconds (so the time of day changes too): the same offset for
  every upload of one patient (keyed hash of the patient ID), a random one for
  each upload without a patient ID. A date without its time is shifted as at
  midnight; a time without its date, or a value that cannot be read, is removed;
- PatientIdentityRemoved = YES, DeidentificationMethod and its code sequence
  record what was done; the file preamble and meta header are rebuilt, so
  nothing of the original header survives outside the dataset.

Pixel data keep the image and nothing else (apps.cases.pixel_data): a compressed
frame is rewritten with only its coding segments (no JPEG COM or APPn/EXIF block,
no JPEG 2000 comment or JP2 XML/UUID box, nothing after the end of the codestream),
RLE is encoded again, uncompressed data are cut to the image's size; what cannot be
cleaned is refused. An image that declares burned-in annotations is refused before
this point (apps.cases.decoding).

Where it runs: ``allow_listed`` and the pixel cleaning run in the bounded decoder
child (apps.cases.decoding), which parses the upload; the web process parses only
the child's allow-listed copy (a few dozen elements, each LUT sequence cut to the
item that is read) and applies the keyed steps (``deidentify``), so the pseudonym
key never reaches the process that parses uploads.

**PNG / JPEG** (``picture_without_metadata``): the decoded pixels are written
into a new PNG, so no text chunk, EXIF, XMP, comment or ICC profile of the
upload survives, and the original bytes are never stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import re
import secrets

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

# LO: at most 64 characters. The code sequence below names the profile and option in full.
METHOD = "Allow-list; PS3.15 Basic Profile, Modified Dates (cxrplatform 3)"
PSEUDONYM_PREFIX = "PX-"

# What is kept of an uploaded dataset (top level), by keyword.
PIXELS = {
    # Image pixel module and what decoding needs.
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration", "PixelAspectRatio",
    "SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue",
    "PixelPaddingRangeLimit", "NumberOfFrames", "PixelData", "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths", "LossyImageCompression", "LossyImageCompressionRatio",
    "LossyImageCompressionMethod", "BurnedInAnnotation",
    # The pixels' physical size (geometry, not identity): areas in mm² on the viewer.
    "PixelSpacing", "ImagerPixelSpacing",
    # Modality LUT, VOI LUT, presentation LUT.
    "RescaleIntercept", "RescaleSlope", "RescaleType", "ModalityLUTSequence", "WindowCenter",
    "WindowWidth", "VOILUTFunction", "VOILUTSequence", "PresentationLUTShape",
    "PresentationLUTSequence",
}  # fmt: skip
DESCRIPTION = {"SOPClassUID", "Modality", "BodyPartExamined", "ViewPosition"}
REPLACED_UIDS = {"SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"}
DATE_TIMES = {  # date -> its time
    "StudyDate": "StudyTime",
    "SeriesDate": "SeriesTime",
    "AcquisitionDate": "AcquisitionTime",
    "ContentDate": "ContentTime",
}
DATETIMES = {"AcquisitionDateTime"}
PSEUDONYMISED = {"PatientName", "PatientID"}
RECORD = {
    "PatientIdentityRemoved", "LongitudinalTemporalInformationModified",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence",
}  # fmt: skip
KEEP = (
    PIXELS | DESCRIPTION | REPLACED_UIDS | set(DATE_TIMES) | set(DATE_TIMES.values())
    | DATETIMES | PSEUDONYMISED | RECORD
)  # fmt: skip
# What is kept inside an item of a kept LUT sequence (LUTExplanation is free text: dropped).
LUT_ITEM_KEEP = {"LUTDescriptor", "LUTData", "ModalityLUTType"}
MAX_SHIFT_DAYS = 3650


def _keyed(key: str, purpose: str, value: str) -> str:
    return hmac.new(key.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def pseudonym_for(patient_id: str, *, key: str) -> str:
    """The pseudonymous patient reference for a patient ID ("" for no ID)."""
    patient_id = patient_id.strip()
    if not patient_id:
        return ""
    return PSEUDONYM_PREFIX + _keyed(key, "patient", patient_id)[:20].upper()


def date_offset(patient_id: str, *, key: str) -> dt.timedelta:
    """How far back a patient's dates and times move: 1-3650 days and 1-86399 seconds.

    The same for every upload of one patient (keyed hash of the ID); random for
    each call without an ID, so unrelated anonymous uploads share no offset."""
    patient_id = patient_id.strip()
    if patient_id:
        digest = _keyed(key, "dates", patient_id)
        days, seconds = int(digest[:8], 16), int(digest[8:16], 16)
    else:
        days, seconds = secrets.randbelow(2**32), secrets.randbelow(2**32)
    return dt.timedelta(days=1 + days % MAX_SHIFT_DAYS, seconds=1 + seconds % 86399)


_TIME = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?$")
_DATETIME = re.compile(r"^(\d{8})(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


def _parse_date(value: str) -> dt.date | None:
    text = value.strip().replace(".", "")  # pre-1993 "YYYY.MM.DD"
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _parse_time(value: str) -> tuple[dt.time, str] | None:
    """The time of a TM value and its fraction as written ("" or ".FFFFFF")."""
    match = _TIME.match(value.strip())
    if match is None:
        return None
    hour, minute, second, fraction = match.groups()
    try:
        parsed = dt.time(int(hour), int(minute or 0), min(int(second or 0), 59))
    except ValueError:
        return None
    return parsed, fraction or ""


def _shifted_time(moment: dt.datetime, fraction: str) -> str:
    return moment.strftime("%H%M%S") + fraction


def _shift_date_time(dataset: Dataset, date_kw: str, time_kw: str, offset: dt.timedelta) -> None:
    date_value = dataset.get(date_kw)
    time_value = dataset.get(time_kw)
    date = _parse_date(str(date_value)) if date_value else None
    if date is None:
        # Nothing to shift a time against: a time without its date goes too.
        for keyword in (date_kw, time_kw):
            if keyword in dataset:
                del dataset[keyword]
        return
    time = _parse_time(str(time_value)) if time_value else None
    moment = dt.datetime.combine(date, time[0] if time else dt.time()) - offset
    setattr(dataset, date_kw, moment.strftime("%Y%m%d"))
    if time is not None:
        setattr(dataset, time_kw, _shifted_time(moment, time[1]))
    elif time_kw in dataset:
        del dataset[time_kw]


def _shift_datetime(value: str, offset: dt.timedelta) -> str | None:
    match = _DATETIME.match(value.strip())
    if match is None:
        return None
    day, hour, minute, second, fraction, zone = match.groups()
    date = _parse_date(day)
    if date is None:
        return None
    try:
        time = dt.time(int(hour or 0), int(minute or 0), min(int(second or 0), 59))
    except ValueError:
        return None
    moment = dt.datetime.combine(date, time) - offset
    return moment.strftime("%Y%m%d%H%M%S") + (fraction or "") + (zone or "")


def _new_uid(key: str, uid: str) -> str:
    """A 2.25 (UUID-derived) UID from a keyed hash: the same original UID always
    maps to the same new one, and the original cannot be recovered without the key."""
    return "2.25." + str(int(_keyed(key, "uid", uid)[:32], 16))


def _keep_only(dataset: Dataset, keep: set[str]) -> None:
    """Delete every element whose keyword is not in ``keep`` (private, unknown,
    overlay and curve elements have no keyword in it)."""
    for element in list(dataset):
        if element.tag.is_private or element.keyword not in keep:
            del dataset[element.tag]


LUT_SEQUENCES = ("ModalityLUTSequence", "VOILUTSequence", "PresentationLUTSequence")


def allow_listed(dataset: Dataset) -> None:
    """Keep only ``KEEP`` of ``dataset`` (in place), and of each LUT sequence its first
    item (the one decoding applies) with only ``LUT_ITEM_KEEP``: what is left is a
    few dozen elements whatever the upload held. Needs no key."""
    _keep_only(dataset, KEEP)
    for keyword in LUT_SEQUENCES:
        if keyword in dataset:
            items = list(dataset[keyword].value or [])[:1]
            for item in items:
                _keep_only(item, LUT_ITEM_KEEP)
            setattr(dataset, keyword, Sequence(items))


def deidentify(
    dataset: Dataset, *, key: str, stored: bool = False, pixels_cleaned: bool = False
) -> tuple[bytes, str]:
    """De-identify ``dataset`` in place; return (the DICOM file's bytes, the pseudonym).

    ``stored``: the dataset is one this platform stored before (its PatientID is
    already the pseudonym, and stays it; its dates move once more, by the
    pseudonym's offset, which is again one offset per patient).
    ``pixels_cleaned``: its pixel data were cleaned already (by the decoder child);
    otherwise they are cleaned here (apps.cases.pixel_data.clean_pixel_data, which
    raises ml.data.dicom.DicomProblem for what cannot be cleaned)."""
    original_id = str(dataset.get("PatientID") or "")
    pseudonym = original_id.strip() if stored else pseudonym_for(original_id, key=key)
    offset = date_offset(original_id, key=key)
    old_meta = dataset.get("file_meta") or FileMetaDataset()

    if not pixels_cleaned:
        from apps.cases.pixel_data import clean_pixel_data

        clean_pixel_data(dataset)
    allow_listed(dataset)
    for keyword in REPLACED_UIDS:
        if dataset.get(keyword):
            setattr(dataset, keyword, _new_uid(key, str(dataset[keyword].value)))
    for date_kw, time_kw in DATE_TIMES.items():
        _shift_date_time(dataset, date_kw, time_kw, offset)
    for keyword in DATETIMES:
        if keyword in dataset:
            shifted = _shift_datetime(str(dataset[keyword].value or ""), offset)
            if shifted is None:
                del dataset[keyword]
            else:
                setattr(dataset, keyword, shifted)

    dataset.PatientName = pseudonym
    dataset.PatientID = pseudonym
    dataset.PatientIdentityRemoved = "YES"
    dataset.LongitudinalTemporalInformationModified = "MODIFIED"
    dataset.DeidentificationMethod = METHOD
    dataset.DeidentificationMethodCodeSequence = Sequence(
        [_code("113100", "Basic Application Confidentiality Profile"),
         _code("113107", "Retain Longitudinal Temporal Information Modified Dates Option")]
    )  # fmt: skip

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.get("SOPClassUID") or old_meta.get(
        "MediaStorageSOPClassUID"
    )
    if "SOPInstanceUID" not in dataset:
        dataset.SOPInstanceUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = old_meta.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.file_meta = meta
    dataset.preamble = b"\x00" * 128  # a preamble may hold a TIFF header with identifiers

    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), pseudonym


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


# -- PNG / JPEG ------------------------------------------------------------------------

DEEP_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}


def _pixels_only(image: Image.Image) -> Image.Image:
    """A new image with ``image``'s pixels and nothing else (an empty ``info``), in a
    mode a PNG stores, such that ml.data.preprocess.to_unit_gray gives what it gives
    for ``image``: deep grayscale stays 16-bit, transparency is composited on black."""
    mode = image.mode
    if mode in DEEP_MODES:
        values = np.asarray(image)
        if values.dtype != np.uint16 and (values.min() < 0 or values.max() > 65535):
            low, high = float(values.min()), float(values.max())
            values = (values - low) / (high - low) * 65535 if high > low else values * 0
        values = np.round(values).astype(np.uint16)
        return Image.frombytes("I;16", image.size, values.astype("<u2").tobytes())
    if mode in {"RGBA", "LA", "PA"} or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        mode = "L" if mode == "LA" else "RGB"
    elif mode not in {"L", "RGB"}:
        mode = "L" if mode == "1" else "RGB"
    pixels = image.convert(mode) if image.mode != mode else image.copy()
    pixels.info = {}  # PNG save would carry over an ICC profile, transparency, dpi...
    return pixels


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIXEL_CHUNKS = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}


def is_pixels_only_png(data: bytes) -> bool:
    """Whether ``data`` is a PNG with no chunk but the pixels' own (no text, EXIF,
    XMP, ICC profile, time or physical-size chunk)."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        if data[position + 4 : position + 8] not in PIXEL_CHUNKS:
            return False
        position += 12 + length
    return True


def picture_without_metadata(image: Image.Image) -> bytes:
    """The decoded picture (EXIF orientation already applied) as a new PNG: the pixels
    only, with no text chunk, EXIF, XMP, comment or ICC profile of the upload."""
    buffer = io.BytesIO()
    _pixels_only(image).save(buffer, format="PNG")
    return buffer.getvalue()

"""Upload validation: decide about a file before anything is stored.

Every refusal names the file and the problem in words a clinician can act
on, with the HTTP status an API answers with: 413 for too large (bytes or
pixels), 415 for a format this platform does not take (or one that does not
match the file's extension), 400 for everything else (empty, truncated,
corrupt, too small, not a chest X-ray).

Accepted: PNG and JPEG (8- or 16-bit, grayscale or RGB, EXIF orientation
applied; a CMYK or YCCK JPEG, as film scanners write, is converted to grayscale with
a note on the image, once the content checks pass) and DICOM (see ml.data.dicom).
Every upload is de-identified here (apps.cases.deidentify) so that what leaves
this module, and so what is stored, never holds the original identifiers: a DICOM
keeps an allow-list of attributes, a PNG or JPEG becomes a new PNG of its decoded pixels (no text,
EXIF, XMP or comments). Logs name an upload by ``upload_ref`` (a prefix of
the SHA-256 of its bytes), never by its file name or anything inside it.
Last, the modality check (ml.ct.modality) refuses a CT slice uploaded as an X-ray
and an X-ray uploaded as CT; for an X-ray the out-of-distribution gate
(ml.serving.ood) then refuses images that are not frontal chest radiographs, and
the view check (ml.serving.viewcheck) lateral views.

Modality: a DICOM file's header decides (Modality CT: a CT slice, windowed for
the lungs; CR or DX: an X-ray, refused when the upload is marked CT); a PNG or
JPEG is what the clinician marked (``modality``, "xray" by default).

This process reads PNG/JPEG headers only (size, format); decoding, the gate, the
view check and the PNG that is stored run in a child process with a memory ceiling
(apps.cases.decoding), so a decompression bomb or a decoder bug costs that
child, not the web process. A DICOM file is not parsed here at all: the child
parses it (a header of any size costs the child), checks its header, cleans its
pixel data and sends back an allow-listed copy, which is all this process reads
before it applies the keyed de-identification.
"""

from __future__ import annotations

import hashlib
import io
import logging
import traceback
import warnings
from dataclasses import dataclass
from pathlib import PurePath

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from PIL import Image, UnidentifiedImageError

from ml.ct.modality import CT_HINT, XRAY_LOOKS_LIKE_CT
from ml.serving.checks import load_input_check

log = logging.getLogger(__name__)

ACCEPTED_FORMATS = {"PNG": "png", "JPEG": "jpeg"}
ACCEPTED_WORDS = "upload PNG, JPEG or DICOM"
# What a file's extension promises; files with other or no extensions (PACS
# exports are often named by UID) are judged by their content alone.
EXTENSION_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG",
    ".dcm": "DICOM", ".dicom": "DICOM", ".dic": "DICOM", ".gif": "GIF", ".bmp": "BMP",
    ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP",
}  # fmt: skip
NOT_A_CHEST_XRAY = {
    "blank": "the image is blank or almost uniform; upload the radiograph itself.",
    "colour": "this looks like a colour photograph or drawing, not a chest X-ray; "
    "upload the radiograph itself.",
    "appearance": "this does not look like a frontal chest X-ray (it may be a photograph, "
    "a document, another body part or a lateral view); upload a frontal (PA or AP) "
    "chest radiograph.",
}


# The view check runs on images the gate accepted: it is a frontal-vs-lateral
# model of chest radiographs and says nothing sensible about other pictures. A frontal
# film upside down or inverted (a negative) is refused by it too (it is not the frontal
# view the model reads), so the refusal says so: the check cannot tell which it was.
LATERAL_VIEW = (
    "this looks like a lateral view; upload a frontal (PA/AP) chest X-ray. "
    "Upside down or inverted films are refused too: upload it the right way up, "
    "as a positive (bones white)."
)


class UploadRejected(Exception):  # noqa: N818 - reads as what happened to the upload
    """A file cannot be accepted. ``status`` is the HTTP status an API answers with."""

    def __init__(self, filename: str, problem: str, *, status: int = 400) -> None:
        self.filename = filename
        self.problem = problem
        self.status = status
        # Every refused file of a multi-file upload, so each error can be shown
        # next to its file; a single refusal lists itself.
        self.rejections: list[UploadRejected] = [self]
        super().__init__(f"{filename}: {problem}")

    @classmethod
    def of_files(cls, rejections: list[UploadRejected]) -> UploadRejected:
        """One exception for several refused files; its status is the first file's."""
        if len(rejections) == 1:
            return rejections[0]
        first = rejections[0]
        combined = cls(
            first.filename,
            first.problem + f" (and {len(rejections) - 1} more file(s) refused)",
            status=first.status,
        )
        combined.rejections = list(rejections)
        return combined


@dataclass(frozen=True)
class ValidatedImage:
    original_name: str
    content: bytes  # what CaseImage.file stores: a PNG of the decoded pixels (any upload)
    sha256: str
    width: int
    height: int
    source_format: str
    dicom: bytes = b""  # the de-identified DICOM (DICOM uploads only)
    patient_pseudonym: str = ""  # keyed hash of the DICOM PatientID (DICOM uploads only)
    upload_ref: str = ""  # what logs call this upload (see upload_ref)
    modality: str = "xray"  # "xray" or "ct": what the upload is read as
    modality_source: str = "marked"  # "marked" (by the clinician) or "header" (DICOM)
    note: str = ""  # shown with the image: what intake did to it (a CMYK JPEG made gray)
    held: bool = False  # held for review: text found in its margins (see text_hold)


def upload_ref(content: bytes) -> str:
    """How logs name an upload: the first 12 hex digits of the SHA-256 of its bytes.
    File names and headers may hold identifiers; this finds the file's log lines for
    whoever has the file, and tells nobody else anything."""
    return hashlib.sha256(content).hexdigest()[:12]


def _log_unexpected(what: str, ref: str, exc: BaseException) -> None:
    """Log an unexpected error with its traceback but not its message, which may
    quote a value from the file."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.warning(
        "unexpected %s for upload %s: %s (message withheld)\n%s",
        what, ref, type(exc).__name__, frames,
    )  # fmt: skip


def _human_bytes(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


def ood_gate():
    """The fitted gate named by CXR_OOD_GATE (loaded once per process), or None when off."""
    path = settings.CXR_OOD_GATE
    return None if path is None else load_input_check("ood_gate", str(path))


def view_check():
    """The fitted view check named by CXR_VIEW_CHECK (loaded once per process), or None."""
    path = settings.CXR_VIEW_CHECK
    return None if path is None else load_input_check("view_check", str(path))


def _check_frontal_view(name: str, lateral: bool, ref: str = "") -> None:
    """Refuse what the view check (run by the decoder, view_check()) called lateral."""
    if lateral:
        log.info("upload %s refused by the view check (lateral)", ref)
        raise UploadRejected(name, LATERAL_VIEW)


def _check_extension(name: str, actual: str) -> None:
    suffix = PurePath(name).suffix.lower()
    promised = EXTENSION_FORMATS.get(suffix)
    if promised is not None and promised != actual:
        raise UploadRejected(
            name,
            f"the file is named {suffix} but holds a {actual} image; "
            f"check it is the right file and save it with a matching extension.",
            status=415,
        )


def _check_size(name: str, width: int, height: int) -> None:
    minimum = settings.CXR_MIN_IMAGE_SIDE
    if min(width, height) < minimum:
        raise UploadRejected(
            name, f"the image is {width}x{height} pixels; each side must be at least {minimum}."
        )


SYNTHETIC_IMAGE = (
    "this image is marked SYNTHETIC: it was made by the platform's image generator and is "
    "not a patient's radiograph ({reason}); synthetic images are never accepted as cases."
)


def _check_not_synthetic(name: str, reason: str, ref: str = "") -> None:
    """Refuse the generator's own output (its mark in the metadata or the pixels, found by
    the decoder: ml.generate.watermark), so it never becomes a case or training data."""
    if reason:
        log.info("upload %s refused: synthetic (%s)", ref, reason)
        raise UploadRejected(name, SYNTHETIC_IMAGE.format(reason=reason))


def _check_modality(name: str, problem: str | None, ref: str = "") -> None:
    """Refuse what the modality check (run by the decoder) says is of the other modality."""
    if problem is not None:
        log.info("upload %s refused by the modality check", ref)
        raise UploadRejected(name, problem)


def _check_chest_xray(
    name: str, verdict: str | None, ref: str = "", ct_slice: bool = False
) -> None:
    """Refuse what the OOD gate (run by the decoder, ood_gate()) did not accept, and a
    CT slice uploaded as an X-ray (the modality check, ml.ct.modality): with its own
    message when the gate let it through, else the gate's with a hint about CT."""
    if ct_slice and verdict is None:
        log.info("upload %s refused by the modality check (a CT slice)", ref)
        raise UploadRejected(name, XRAY_LOOKS_LIKE_CT)
    if verdict is not None:
        log.info("upload %s refused by the OOD gate (%s)", ref, verdict)
        problem = NOT_A_CHEST_XRAY[verdict]
        if ct_slice and verdict == "appearance":
            problem += CT_HINT
        raise UploadRejected(name, problem)


def _too_many_pixels(name: str, width: int, height: int) -> UploadRejected:
    return UploadRejected(
        name,
        f"the image has {width}x{height} pixels; "
        f"the limit is {settings.CXR_MAX_IMAGE_PIXELS:,} pixels.",
        status=413,
    )


# Text burned into the pixels: the decoder's text check (ml.serving.burned_text) read
# words in the image's margins. The image is stored, and its own case shows it, but it
# is held: not offered for expert labelling (so never in a dataset) until its owner
# looks and releases it (services.release_held_image).
TEXT_HELD = (
    "Held for review: text was found in the image's margins (it may be a name, date or "
    "ID burned into the film). Not offered for labelling or datasets until released."
)
TEXT_UNCHECKED = (
    "Held for review: the image could not be checked for text burned into it. Not "
    "offered for labelling or datasets until released."
)


def text_hold(decoded, ref: str = "") -> str:
    """The hold note for what the decoder's text check found ("" for none)."""
    if decoded.text_found:
        log.info("upload %s held: text found in its margins", ref)
        return TEXT_HELD
    if decoded.text_unchecked:
        log.warning("upload %s held: text check failed (%s)", ref, decoded.text_unchecked)
        return TEXT_UNCHECKED
    return ""


def _with_hold(note: str, hold: str) -> str:
    return " ".join(part for part in (hold, note) if part)[:300]


def validate_image(uploaded: UploadedFile, *, modality: str = "xray") -> ValidatedImage:
    """Check one upload, to be read as ``modality`` ("xray" or "ct"; a DICOM header's
    Modality overrides it, see the module docstring)."""
    from apps.cases.kinds import KINDS  # the study kinds: a value of each row's modality

    if modality not in KINDS:
        raise ValueError(f"unknown modality {modality!r}; expected one of {tuple(KINDS)}")
    name = uploaded.name or "unnamed file"
    size = uploaded.size or 0
    if size == 0:
        raise UploadRejected(name, "the file is empty.")
    limit = settings.CXR_MAX_UPLOAD_BYTES
    if size > limit:
        raise UploadRejected(
            name,
            f"the file is {_human_bytes(size)}; the limit is {_human_bytes(limit)}.",
            status=413,
        )
    uploaded.seek(0)
    content = uploaded.read()
    if not content:
        raise UploadRejected(name, "the file is empty.")
    from ml.data.dicom import looks_like_dicom

    if looks_like_dicom(content):
        return _validate_dicom(name, content, modality)
    return _validate_picture(name, content, modality)


def _validate_picture(name: str, content: bytes, modality: str = "xray") -> ValidatedImage:
    max_pixels = settings.CXR_MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content)) as probe:
                fmt = probe.format
                width, height = probe.size
                if width * height > max_pixels:
                    raise _too_many_pixels(name, width, height)
                if fmt not in ACCEPTED_FORMATS:
                    raise UploadRejected(
                        name, f"{fmt} images are not accepted; {ACCEPTED_WORDS}.", status=415
                    )
                _check_extension(name, fmt)
                frames = getattr(probe, "n_frames", 1)
                if frames > 1:
                    raise UploadRejected(
                        name,
                        f"the image is animated ({frames} frames); upload a single still image.",
                        status=415,
                    )
                probe.verify()  # reads the header and chunks; decodes no pixels
    except UploadRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadRejected(name, "the image is too large to decode safely.", status=413) from None
    except UnidentifiedImageError:
        raise UploadRejected(
            name,
            f"this is not an image file this platform can read; {ACCEPTED_WORDS}.",
            status=415,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadRejected(name, f"the image is truncated or corrupt ({exc}).") from None
    except Exception as exc:
        _log_unexpected("decoder error", upload_ref(content), exc)
        raise UploadRejected(
            name, f"the image is truncated or corrupt ({type(exc).__name__})."
        ) from None
    ref = upload_ref(content)
    # Decoding, and what needs the decoded pixels (the gate, the view check and the
    # PNG that is stored: the pixels only, never the bytes as sent), runs in a
    # bounded child process (apps.cases.decoding).
    decoded = _decode(name, "picture", content, ref, modality)
    _check_size(name, decoded.width, decoded.height)
    _check_not_synthetic(name, decoded.synthetic, ref=ref)
    _check_modality(name, decoded.modality_problem, ref=ref)
    _check_chest_xray(name, decoded.verdict, ref=ref, ct_slice=decoded.ct_slice)
    _check_frontal_view(name, decoded.lateral, ref=ref)
    hold = text_hold(decoded, ref)
    return ValidatedImage(
        original_name=name,
        content=decoded.stored,
        sha256=hashlib.sha256(decoded.stored).hexdigest(),
        width=decoded.width,
        height=decoded.height,
        source_format=ACCEPTED_FORMATS[fmt],
        upload_ref=ref,
        modality=modality,
        note=_with_hold(decoded.note, hold),
        held=bool(hold),
    )


def _decode(name: str, kind: str, content: bytes, ref: str, modality: str = "xray"):
    """The upload decoded in a child process with a memory ceiling (apps.cases.decoding)."""
    from apps.cases.decoding import DecodeRefused, decode_upload

    try:
        return decode_upload(kind, content, modality)
    except DecodeRefused as exc:
        log.info("upload %s refused by the bounded decoder (%s)", ref, exc.status)
        raise UploadRejected(name, exc.problem, status=exc.status) from None


def _validate_dicom(name: str, content: bytes, marked: str = "xray") -> ValidatedImage:
    from apps.cases.decoding import max_inflated_bytes
    from apps.cases.deidentify import deidentify
    from ml.data.dicom import read_dataset

    _check_extension(name, "DICOM")
    ref = upload_ref(content)
    # The file is parsed in the bounded child, never here: it routes it by its header,
    # checks the header, cleans the pixel data, decodes them, and sends back an
    # allow-listed copy of a few dozen elements (apps.cases.decoding).
    decoded = _decode(name, "dicom", content, ref, marked)
    width, height = decoded.width, decoded.height
    _check_size(name, width, height)
    _check_not_synthetic(name, decoded.synthetic, ref=ref)
    _check_modality(name, decoded.modality_problem, ref=ref)
    _check_chest_xray(name, decoded.verdict, ref=ref, ct_slice=decoded.ct_slice)
    _check_frontal_view(name, decoded.lateral, ref=ref)
    hold = text_hold(decoded, ref)

    try:
        dataset = read_dataset(
            decoded.dicom, max_inflated=max_inflated_bytes(settings.CXR_MAX_IMAGE_PIXELS)
        )
        dicom, pseudonym = deidentify(dataset, key=settings.CXR_PSEUDONYM_KEY, pixels_cleaned=True)
    except Exception as exc:
        _log_unexpected("de-identification error", ref, exc)
        raise UploadRejected(
            name, f"the DICOM header is corrupt and cannot be de-identified ({type(exc).__name__})."
        ) from None
    modality = decoded.modality or marked
    log.info(
        "DICOM upload %s: %s, %s, %s%s", ref, decoded.transfer_syntax, decoded.photometric,
        modality, f", shown through {decoded.window}" if decoded.window else "",
    )  # fmt: skip
    return ValidatedImage(
        original_name=name,
        content=decoded.stored,
        sha256=hashlib.sha256(dicom).hexdigest(),
        width=width,
        height=height,
        source_format="dicom",
        dicom=dicom,
        patient_pseudonym=pseudonym,
        upload_ref=ref,
        modality=modality,
        modality_source=decoded.modality_source or "marked",
        note=hold,
        held=bool(hold),
    )

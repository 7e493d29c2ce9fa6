"""Upload validation: decide about a file before anything is stored.

Every refusal names the file and the problem in words a clinician can act
on, with the HTTP status an API answers with: 413 for too large (bytes or
pixels), 415 for a format this platform does not take (or one that does not
match the file's extension), 400 for everything else (empty, truncated,
corrupt, too small, not a chest X-ray).

Accepted: PNG and JPEG (8- or 16-bit, grayscale or RGB, EXIF orientation
applied) and DICOM (see ml.data.dicom). A DICOM upload is de-identified here
(apps.cases.deidentify) so that what leaves this module, and so what is
stored, never holds the original identifiers. Last, the out-of-distribution
gate (ml.serving.ood) refuses images that are not frontal chest radiographs,
then the view check (ml.serving.viewcheck) refuses lateral views.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePath

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from PIL import Image, UnidentifiedImageError

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
# model of chest radiographs and says nothing sensible about other pictures.
LATERAL_VIEW = "this looks like a lateral view; upload a frontal (PA/AP) chest X-ray."


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
    content: bytes  # what CaseImage.file stores: the PNG/JPEG as sent, or a DICOM's PNG rendition
    sha256: str
    width: int
    height: int
    source_format: str
    dicom: bytes = b""  # the de-identified DICOM (DICOM uploads only)
    patient_pseudonym: str = ""  # keyed hash of the DICOM PatientID (DICOM uploads only)


def _human_bytes(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


@lru_cache(maxsize=4)
def _load_gate(path: str):
    from ml.serving.ood import OodGate

    return OodGate.load(Path(path))


def ood_gate():
    """The fitted gate named by CXR_OOD_GATE (loaded once per process), or None when off."""
    path = settings.CXR_OOD_GATE
    return None if path is None else _load_gate(str(path))


@lru_cache(maxsize=4)
def _load_view_check(path: str):
    from ml.serving.viewcheck import ViewCheck

    return ViewCheck.load(Path(path))


def view_check():
    """The fitted view check named by CXR_VIEW_CHECK (loaded once per process), or None."""
    path = settings.CXR_VIEW_CHECK
    return None if path is None else _load_view_check(str(path))


def _check_frontal_view(name: str, gray) -> None:
    check = view_check()
    if check is None:
        return
    if check.is_lateral(gray):
        log.info("upload %r refused by the view check (lateral)", name)
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


def _check_chest_xray(name: str, gray, colourful: float = 0.0) -> None:
    gate = ood_gate()
    if gate is None:
        return
    verdict = gate.verdict(gray, colourful)
    if verdict is not None:
        log.info("upload %r refused by the OOD gate (%s)", name, verdict)
        raise UploadRejected(name, NOT_A_CHEST_XRAY[verdict])


def _too_many_pixels(name: str, width: int, height: int) -> UploadRejected:
    return UploadRejected(
        name,
        f"the image has {width}x{height} pixels; "
        f"the limit is {settings.CXR_MAX_IMAGE_PIXELS:,} pixels.",
        status=413,
    )


def validate_image(uploaded: UploadedFile) -> ValidatedImage:
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
        return _validate_dicom(name, content)
    return _validate_picture(name, content)


def _validate_picture(name: str, content: bytes) -> ValidatedImage:
    from ml.data.preprocess import open_image, to_unit_gray
    from ml.serving.ood import colourful_fraction

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
                if probe.mode == "CMYK":
                    raise UploadRejected(
                        name,
                        "the image is in CMYK colour (a print format); export it as grayscale "
                        "or RGB.",
                        status=415,
                    )
                probe.verify()
            # verify() does not decode pixel data; a full load catches truncation.
            with open_image(io.BytesIO(content)) as upright:
                width, height = upright.size  # after EXIF orientation
                gray = to_unit_gray(upright)
                colourful = colourful_fraction(upright)
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
        log.warning("unexpected decoder error for upload %r", name, exc_info=True)
        raise UploadRejected(
            name, f"the image is truncated or corrupt ({type(exc).__name__})."
        ) from None
    _check_size(name, width, height)
    _check_chest_xray(name, gray, colourful)
    _check_frontal_view(name, gray)
    return ValidatedImage(
        original_name=name,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        width=width,
        height=height,
        source_format=ACCEPTED_FORMATS[fmt],
    )


DICOM_STATUS = {"invalid": 400, "unsupported": 415, "too_large": 413}


def _validate_dicom(name: str, content: bytes) -> ValidatedImage:
    from ml.data.dicom import (
        DicomProblem,
        check_image,
        not_a_frontal_chest_radiograph,
        read_dataset,
        to_uint8,
        to_unit_gray,
    )

    _check_extension(name, "DICOM")
    try:
        dataset = read_dataset(content)
        info = check_image(dataset, max_pixels=settings.CXR_MAX_IMAGE_PIXELS)
        if (problem := not_a_frontal_chest_radiograph(dataset)) is not None:
            raise DicomProblem(problem)
        if str(dataset.get("BurnedInAnnotation") or "").strip().upper() == "YES":
            raise DicomProblem(
                "the DICOM says patient details are burned into the image (Burned In "
                "Annotation = YES); export the image without them."
            )
        gray = to_unit_gray(dataset)
    except DicomProblem as exc:
        raise UploadRejected(name, exc.problem, status=DICOM_STATUS[exc.kind]) from None
    except Exception as exc:
        log.warning("unexpected DICOM error for upload %r", name, exc_info=True)
        raise UploadRejected(
            name, f"the DICOM file is truncated or corrupt ({type(exc).__name__})."
        ) from None
    height, width = gray.shape
    _check_size(name, width, height)
    _check_chest_xray(name, gray)
    _check_frontal_view(name, gray)

    from apps.cases.deidentify import deidentify

    try:
        dicom, pseudonym = deidentify(dataset, key=settings.CXR_PSEUDONYM_KEY)
    except Exception as exc:
        log.warning("could not de-identify upload %r", name, exc_info=True)
        raise UploadRejected(
            name, f"the DICOM header is corrupt and cannot be de-identified ({type(exc).__name__})."
        ) from None
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(gray), mode="L").save(buffer, format="PNG")
    log.info("DICOM upload %r: %s, %s", name, info.transfer_syntax, info.photometric)
    return ValidatedImage(
        original_name=name,
        content=buffer.getvalue(),
        sha256=hashlib.sha256(dicom).hexdigest(),
        width=width,
        height=height,
        source_format="dicom",
        dicom=dicom,
        patient_pseudonym=pseudonym,
    )

"""Upload validation: decide about a file before anything is stored.

Every refusal names the file and the problem in words a clinician can act
on. Input-safety hardening (DICOM, OOD gate, fuzzing) is a later issue; this
covers the classes of bad input every upload path must refuse.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = {"PNG": "png", "JPEG": "jpeg"}


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
    content: bytes
    sha256: str
    width: int
    height: int
    source_format: str


def _human_bytes(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


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
    max_pixels = settings.CXR_MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content)) as probe:
                fmt = probe.format
                width, height = probe.size
                if width * height > max_pixels:
                    raise UploadRejected(
                        name,
                        f"the image has {width}x{height} pixels; "
                        f"the limit is {max_pixels:,} pixels.",
                        status=413,
                    )
                if fmt not in ACCEPTED_FORMATS:
                    raise UploadRejected(
                        name, f"{fmt} images are not accepted; upload PNG or JPEG.", status=415
                    )
                probe.verify()
            # verify() does not decode pixel data; a full load catches truncation.
            with Image.open(io.BytesIO(content)) as full:
                full.load()
    except UploadRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadRejected(name, "the image is too large to decode safely.", status=413) from None
    except UnidentifiedImageError:
        raise UploadRejected(
            name,
            "this is not an image file this platform can read; upload PNG or JPEG.",
            status=415,
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadRejected(name, f"the image is truncated or corrupt ({exc}).") from None
    minimum = settings.CXR_MIN_IMAGE_SIDE
    if min(width, height) < minimum:
        raise UploadRejected(
            name, f"the image is {width}x{height} pixels; each side must be at least {minimum}."
        )
    return ValidatedImage(
        original_name=name,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        width=width,
        height=height,
        source_format=ACCEPTED_FORMATS[fmt],
    )

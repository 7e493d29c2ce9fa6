"""The pixel hash that tells when two stored images are the same picture.

A file's own SHA-256 does not: every clinical upload is stored re-encoded as a PNG
of its decoded pixels (``apps.cases.deidentify``), so a reference JPEG uploaded as
a case has another file hash than the reference copy. The pixel hash is the SHA-256
of the decoded, upright picture (EXIF orientation applied, as uploads are), in the
mode uploads are stored in (8-bit gray or RGB, 16-bit gray; an RGB picture whose
channels are equal counts as gray), with its size and sample type: equal for the
same picture whatever the file format or metadata. Dataset snapshots keep one item per pixel hash.
"""

from __future__ import annotations

import hashlib
from typing import IO

import numpy as np
from django.db.models.fields.files import FieldFile
from PIL import Image


class UnreadableImage(Exception):  # noqa: N818 - reads as what happened
    pass


def pixel_sha256(file: FieldFile) -> str:
    """The pixel hash of a stored image file (raises UnreadableImage)."""
    try:
        with file.open("rb") as fh:
            return pixel_sha256_of(fh, name=file.name or "")
    except FileNotFoundError as exc:
        raise UnreadableImage(f"{file.name}: not in storage ({exc})") from None


def pixel_sha256_of(fh: IO[bytes], *, name: str = "image") -> str:
    """The pixel hash of an open image file (raises UnreadableImage)."""
    from apps.cases.deidentify import _pixels_only
    from ml.data.preprocess import open_image

    try:
        image = _pixels_only(open_image(fh))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{name}: {type(exc).__name__}: {exc}") from None
    pixels = np.asarray(image)
    if pixels.ndim == 3 and (pixels == pixels[..., :1]).all():
        pixels = pixels[..., 0]
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    pixels = pixels.astype(pixels.dtype.newbyteorder("<"))  # one byte order for 16-bit
    digest = hashlib.sha256(f"{width}x{height}x{channels}:{pixels.dtype.str}:".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def file_sha256(file: FieldFile) -> str:
    """SHA-256 of a stored file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

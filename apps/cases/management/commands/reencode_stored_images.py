"""Bring images stored before uploads were re-encoded and allow-listed up to date.

Run once after upgrading (idempotent: files already done are skipped):

- a PNG/JPEG upload stored as it was sent becomes a PNG of its decoded pixels,
  without the upload's text chunks, EXIF, XMP or comments;
- a DICOM stored with the earlier deny-list de-identification is de-identified
  again with the allow-list (its pseudonym stays the same).

Each image is converted in a transaction of its own; the old file is deleted
only after the new one is recorded, so an interrupted run loses nothing.
"""

from __future__ import annotations

import hashlib
import io

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.cases.deidentify import (
    METHOD,
    deidentify,
    is_pixels_only_png,
    picture_without_metadata,
)
from apps.cases.models import CaseImage
from cxrplatform.files import files_removed_on_error


class Command(BaseCommand):
    help = (
        "Re-encode PNG/JPEG uploads stored as sent (dropping their metadata) and "
        "de-identify again DICOM files stored with the earlier deny-list. Idempotent."
    )

    def handle(self, *args, **options):
        counts = {"converted": 0, "already done": 0, "failed": 0}
        for image in CaseImage.objects.order_by("pk").iterator():
            for field, convert in (("file", _picture), ("original", _dicom)):
                if field == "file" and image.source_format == CaseImage.SourceFormat.DICOM:
                    continue  # a DICOM's PNG rendition was always written from pixels
                field_file = getattr(image, field)
                if not field_file:
                    continue
                try:
                    with field_file.open("rb") as fh:
                        data = fh.read()
                    new = convert(data)
                except Exception as exc:
                    counts["failed"] += 1
                    self.stderr.write(f"image {image.pk} {field}: {type(exc).__name__}")
                    continue
                if new is None:
                    counts["already done"] += 1
                    continue
                _replace(image, field, new)
                counts["converted"] += 1
        self.stdout.write(", ".join(f"{n} {what}" for what, n in counts.items()))
        if counts["failed"]:
            self.stderr.write("some files could not be read or converted (listed above)")


def _picture(data: bytes) -> bytes | None:
    if is_pixels_only_png(data):
        return None
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return picture_without_metadata(ImageOps.exif_transpose(image))


def _dicom(data: bytes) -> bytes | None:
    from ml.data.dicom import read_dataset

    dataset = read_dataset(data)
    if str(dataset.get("DeidentificationMethod") or "") == METHOD:
        return None
    content, _ = deidentify(dataset, key=settings.CXR_PSEUDONYM_KEY, stored=True)
    return content


def _replace(image: CaseImage, field: str, content: bytes) -> None:
    field_file = getattr(image, field)
    old_name, storage = field_file.name, field_file.storage
    with files_removed_on_error() as stored, transaction.atomic():
        field_file.save("upload", ContentFile(content), save=False)
        stored.add(field_file.name)
        update = [field]
        if field == "original" or image.source_format != CaseImage.SourceFormat.DICOM:
            # sha256 is the stored DICOM's for DICOM uploads, else the stored picture's.
            image.sha256 = hashlib.sha256(content).hexdigest()
            update.append("sha256")
        image.save(update_fields=update)
    storage.delete(old_name)

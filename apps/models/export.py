"""Export a dataset snapshot (or every confirmed clinical label) in the layout that
``python -m ml classifier train --data FOLDER`` reads back.

The export is a folder, or a zip of one::

    labels.csv      path,label,patient,source,split,sha256  (ml.data.loaders.load_generic)
    images/         one file per item, as stored: ref-<id>.<ext>, case-<id>.png
    manifest.json   format, snapshot, counts, and per image its hashes, origin and
                    label provenance

``split`` is the snapshot's frozen split; ``ml classifier train`` uses it when every row
has one (an export of confirmed labels has none: ``ml classifier train`` then splits by
patient).
Clinical patient references leave the platform as keyed hashes (the same patient
gets the same hash in every export under one ``CXR_PSEUDONYM_KEY``), so patient-level
splits still work and the reference itself does not travel; readers are named
``reader-<id>`` and their free-text notes are left out.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from apps.accounts.models import AuditEvent, record
from apps.accounts.roles import primary_role
from apps.cases.labelling import current_policy
from apps.cases.models import UNUSABLE, CaseImage
from apps.cases.provenance import without_notes
from apps.models.datasets import ITEM_IMAGES, item_image
from apps.models.models import DatasetSnapshot
from cxrplatform.errors import Refused

FORMAT = "cxr-export/1"
COLUMNS = ["path", "label", "patient", "source", "split", "sha256"]
CHUNK = 1 << 20


class ExportError(Refused):
    pass


@dataclass
class _Row:
    key: str
    file: FieldFile
    label: str
    patient: str
    source: str
    split: str
    pixel_sha256: str
    origin: dict
    provenance: dict
    path: str = ""
    sha256: str = ""


def _patient(patient: str) -> str:
    """Clinical patient keys become keyed hashes; reference ones (public) stay."""
    if not patient.startswith("clinical-"):
        return patient
    key = settings.CXR_PSEUDONYM_KEY.encode()
    digest = hmac.new(key, f"export-patient:{patient}".encode(), hashlib.sha256).hexdigest()
    return f"clinical-{digest[:16]}"


def _origin(item_image: Any) -> dict:
    if isinstance(item_image, CaseImage):
        origin = {
            "kind": "clinical",
            "image_id": item_image.pk,
            "source_format": item_image.source_format,
            "uploaded_at": item_image.created_at.isoformat(),
        }
        if item_image.source_format == CaseImage.SourceFormat.DICOM:
            origin["deidentified_dicom_sha256"] = item_image.sha256
        return origin
    return {
        "kind": "reference",
        "reference_id": item_image.pk,
        "original_name": item_image.original_name,
        "source_file_sha256": item_image.sha256,
    }


def _snapshot_rows(snapshot: DatasetSnapshot) -> list[_Row]:
    items = snapshot.items.select_related(*ITEM_IMAGES).order_by("pk")
    rows = []
    for item in items:
        image = item_image(item)
        if image is None:  # withdrawn, or its case deleted: not exported
            continue
        rows.append(
            _Row(
                key=item.key,
                file=image.file,
                label=item.label,
                patient=_patient(item.patient),
                source=item.source,
                split=item.split,
                pixel_sha256=item.pixel_sha256,
                origin=_origin(image),
                provenance=without_notes(item.provenance),
            )
        )
    return rows


def _confirmed_rows() -> list[_Row]:
    """Every clinical image with a confirmed class now, one per picture."""
    from apps.models.datasets import case_provenance, clinical_patient
    from apps.models.fingerprint import UnreadableImage, pixel_sha256

    images = (
        CaseImage.objects.exclude(confirmed_label__in=["", UNUSABLE])
        .select_related("case")
        .order_by("pk")
    )
    rows, seen = [], set()
    for image in images:
        try:
            pixels = pixel_sha256(image.file)
        except UnreadableImage as exc:
            raise ExportError(f"Image {image.pk} cannot be read from storage: {exc}") from None
        if pixels in seen:
            continue
        seen.add(pixels)
        rows.append(
            _Row(
                key=f"case-{image.pk}",
                file=image.file,
                label=image.confirmed_label,
                patient=_patient(clinical_patient(image)),
                source="clinical",
                split="",
                pixel_sha256=pixels,
                origin=_origin(image),
                provenance=without_notes(case_provenance(image)),
            )
        )
    return rows


def _copy(row: _Row, write: Any) -> None:
    """Copy the row's stored file through ``write(name, chunks)``, hashing it."""
    suffix = Path(row.file.name or "").suffix.lower() or ".png"
    row.path = f"images/{row.key}{suffix}"
    digest = hashlib.sha256()
    try:
        with row.file.open("rb") as fh:

            def chunks():
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    digest.update(chunk)
                    yield chunk

            write(row.path, chunks())
    except FileNotFoundError:
        raise ExportError(f"{row.key}: its file {row.file.name} is missing from storage.") from None
    row.sha256 = digest.hexdigest()


def _labels_csv(rows: list[_Row]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row.path, row.label, row.patient, row.source, row.split, row.sha256])
    return buffer.getvalue().encode()


def _manifest(rows: list[_Row], snapshot: DatasetSnapshot | None, labels: bytes, actor) -> dict:
    from ml.data.loaders import LABEL_MAPPING_VERSION

    counter = Counter((r.split, r.label, r.source) for r in rows)
    return {
        "format": FORMAT,
        "exported_at": timezone.now().isoformat(),
        "exported_by_role": primary_role(actor) if actor is not None else None,
        "selection": "snapshot" if snapshot else "confirmed-labels",
        "snapshot": None
        if snapshot is None
        else {
            "id": snapshot.pk,
            "content_hash": snapshot.content_hash,
            "parent": snapshot.parent_id,
            "created_at": snapshot.created_at.isoformat(),
        },
        "read_back": "python -m ml classifier train --data <this folder> --out <folder>",
        "labels_csv": {"path": "labels.csv", "columns": COLUMNS, "sha256": _sha(labels)},
        "label_policy": current_policy().as_record(),
        "label_mapping_version": LABEL_MAPPING_VERSION,
        "counts": {
            "total": len(rows),
            "by_split_class_source": [
                {"split": s, "label": label, "source": source, "n": n}
                for (s, label, source), n in sorted(counter.items())
            ],
        },
        "images": [
            {
                "path": r.path,
                "sha256": r.sha256,
                "pixel_sha256": r.pixel_sha256,
                "label": r.label,
                "split": r.split or None,
                "source": r.source,
                "patient": r.patient,
                "origin": r.origin,
                "label_provenance": r.provenance,
            }
            for r in rows
        ],
    }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rows(snapshot: DatasetSnapshot | None) -> list[_Row]:
    rows = _snapshot_rows(snapshot) if snapshot is not None else _confirmed_rows()
    if not rows:
        raise ExportError(
            "Nothing to export: "
            + ("the snapshot is empty." if snapshot else "no image has a confirmed label yet.")
        )
    return rows


def _audit(actor, snapshot: DatasetSnapshot | None, manifest: dict, to: str) -> None:
    after = {"images": manifest["counts"]["total"], "to": to, "format": FORMAT}
    if snapshot is not None:
        record(actor=actor, action="dataset.export", target=snapshot, after=after)
    else:
        AuditEvent.objects.create(
            actor=actor if getattr(actor, "is_authenticated", False) else None,
            action="dataset.export",
            target_type="cases.CaseImage",
            target_id="confirmed-labels",
            after=after,
        )


def export_to_folder(*, snapshot: DatasetSnapshot | None, out: Path, actor=None) -> dict:
    """Write the export into ``out`` (a new or empty folder); returns the manifest.

    Written beside ``out`` first and renamed into place, so a failure leaves no
    half-written export."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder; choose a new one.")
    rows = _rows(snapshot)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (work / "images").mkdir()

        def write(name: str, chunks) -> None:
            with (work / name).open("wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)

        for row in rows:
            _copy(row, write)
        labels = _labels_csv(rows)
        (work / "labels.csv").write_bytes(labels)
        manifest = _manifest(rows, snapshot, labels, actor)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _audit(actor, snapshot, manifest, "folder")
    return manifest


def export_to_zip(*, snapshot: DatasetSnapshot | None, fh: IO[bytes], actor=None) -> dict:
    """Write the export as a zip into ``fh`` (a temporary file the caller streams)."""
    rows = _rows(snapshot)
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as archive:

        def write(name: str, chunks) -> None:
            # Images are compressed already: stored, not deflated again.
            with archive.open(zipfile.ZipInfo(name, _zip_time()), "w") as member:
                for chunk in chunks:
                    member.write(chunk)

        for row in rows:
            _copy(row, write)
        labels = _labels_csv(rows)
        archive.writestr("labels.csv", labels)
        manifest = _manifest(rows, snapshot, labels, actor)
        archive.writestr("manifest.json", json.dumps(manifest, indent=2))
    _audit(actor, snapshot, manifest, "zip")
    return manifest


def _zip_time() -> tuple[int, int, int, int, int, int]:
    now = timezone.localtime()
    return (now.year, now.month, now.day, now.hour, now.minute, now.second)


def export_name(snapshot: DatasetSnapshot | None) -> str:
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    return f"snapshot-{snapshot.pk}" if snapshot else f"confirmed-labels-{stamp}"

"""Seed-data import and dataset snapshots."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from django.core.files.base import ContentFile
from django.db import transaction
from PIL import Image

from apps.cases.models import UNUSABLE, CaseImage
from apps.models.models import DatasetSnapshot, ReferenceImage, SnapshotItem, Split
from cxrplatform.files import files_removed_on_error

log = logging.getLogger(__name__)


def import_reference_dataset(root: Path, layout: str = "auto") -> dict[str, int]:
    """Load a seed data set as labelled reference images; idempotent by sha256.

    Uses the ``ml.data.loaders`` loaders, so the label mapping and exclusions are the
    ones training uses. Each image is checked to decode before it is stored.
    """
    from ml.data.loaders import load_dataset

    dataset = load_dataset(Path(root), layout)
    created = skipped = unreadable = 0
    for record in dataset.records:
        content = record.path.read_bytes()
        digest = hashlib.sha256(content).hexdigest()
        if ReferenceImage.objects.filter(sha256=digest).exists():
            skipped += 1
            continue
        try:
            with Image.open(record.path) as probe:
                probe.load()
        except (OSError, SyntaxError, ValueError):
            unreadable += 1
            continue
        with files_removed_on_error() as stored, transaction.atomic():
            image = ReferenceImage(
                sha256=digest,
                label=record.label,
                patient=record.patient,
                source=record.source,
                original_name=record.path.name,
            )
            image.file.save(record.path.name, ContentFile(content), save=False)
            stored.add(image.file.name)
            image.save()
        created += 1
    result = {
        "created": created,
        "already_present": skipped,
        "unreadable": unreadable,
        "excluded_by_mapping": sum(dataset.excluded.values()),
    }
    log.info("import %s: %s", root, result)
    return result


def _hash(items: list[tuple[str, str, str]]) -> str:
    return hashlib.sha256(json.dumps(sorted(items)).encode()).hexdigest()


@transaction.atomic
def create_snapshot(*, created_by=None, seed: int = 0) -> DatasetSnapshot:
    """Freeze the current training data.

    The first snapshot splits the reference images by patient (``ml.data.splits``).
    Later ones keep every item of the previous snapshot with its split (so the
    test split never changes), put reference images imported since then into
    train, and add every newly confirmed clinical image to train.
    """
    from ml.data.loaders import Record
    from ml.data.splits import split_records

    parent = DatasetSnapshot.objects.select_for_update().first()
    items: list[SnapshotItem] = []
    if parent is None:
        references = list(ReferenceImage.objects.order_by("pk"))
        if not references:
            raise ValueError("No reference images: run `manage.py import_dataset` first.")
        records = [
            # A reference image always has its file (the field is required).
            Record(path=Path(r.file.name), label=r.label, patient=r.patient, source=r.source)  # type: ignore[arg-type]
            for r in references
        ]
        splits = split_records(records, seed=seed)
        items = [
            SnapshotItem(
                reference_image=r, label=r.label, split=s, patient=r.patient, source=r.source
            )
            for r, s in zip(references, splits, strict=True)
        ]
    else:
        for old in parent.items.all():
            old.pk = None
            items.append(old)
        known_refs = {i.reference_image_id for i in items if i.reference_image_id}
        for r in ReferenceImage.objects.exclude(pk__in=known_refs):
            items.append(
                SnapshotItem(
                    reference_image=r,
                    label=r.label,
                    split=Split.TRAIN,
                    patient=r.patient,
                    source=r.source,
                )
            )
    known_cases = {i.case_image_id for i in items if i.case_image_id}
    confirmed = (
        CaseImage.objects.exclude(confirmed_label__in=["", UNUSABLE])
        .exclude(pk__in=known_cases)
        .select_related("case")
    )
    for image in confirmed:
        patient = image.case.patient_ref or f"case-{image.case_id}"
        items.append(
            SnapshotItem(
                case_image=image,
                label=image.confirmed_label,
                split=Split.TRAIN,
                patient=f"clinical-{patient}",
                source="clinical",
            )
        )
    counts: dict[str, dict[str, int] | int] = {}
    for split, counter in (
        (s, Counter(i.label for i in items if i.split == s)) for s in Split.values
    ):
        counts[split] = dict(sorted(counter.items()))
    counts["clinical"] = sum(1 for i in items if i.case_image_id)
    snapshot = DatasetSnapshot.objects.create(
        created_by=created_by,
        parent=parent,
        content_hash=_hash([(i.key, i.label, i.split) for i in items]),
        counts=counts,
    )
    for item in items:
        item.snapshot = snapshot
    SnapshotItem.objects.bulk_create(items)
    log.info("snapshot %s: %s", snapshot.pk, counts)
    return snapshot


def new_confirmed_labels_since_last_snapshot() -> int:
    last = DatasetSnapshot.objects.first()
    confirmed = CaseImage.objects.exclude(confirmed_label__in=["", UNUSABLE])
    if last is None:
        return confirmed.count()
    return confirmed.exclude(
        pk__in=last.items.filter(case_image__isnull=False).values("case_image_id")
    ).count()

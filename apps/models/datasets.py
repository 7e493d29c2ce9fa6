"""Seed-data import and dataset snapshots."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Exists, OuterRef

from apps.cases.models import UNUSABLE, CaseImage
from apps.models.fingerprint import UnreadableImage, pixel_sha256, pixel_sha256_of
from apps.models.models import DatasetSnapshot, ReferenceImage, SnapshotItem, Split
from cxrplatform.errors import Refused
from cxrplatform.files import files_removed_on_error

log = logging.getLogger(__name__)


class NoReferenceImages(Refused):
    """No snapshot (so no training run) before the reference dataset is imported."""


def import_reference_dataset(root: Path, layout: str = "auto") -> dict[str, int]:
    """Load a seed data set as labelled reference images; idempotent by sha256.

    Uses the ``ml.data.loaders`` loaders, so the label mapping and exclusions are the
    ones training uses. Each image is checked to decode before it is stored, and its
    pixel hash kept (snapshots hold one item per picture).
    """
    from ml.data.loaders import load_dataset

    dataset = load_dataset(Path(root), layout)
    created = skipped = unreadable = synthetic = 0
    for record in dataset.records:
        content = record.path.read_bytes()
        digest = hashlib.sha256(content).hexdigest()
        if ReferenceImage.objects.filter(sha256=digest).exists():
            skipped += 1
            continue
        if _synthetic(content):  # the generator's output is never real data
            log.warning("import %s: %s is marked synthetic; not imported", root, record.path.name)
            synthetic += 1
            continue
        try:
            with record.path.open("rb") as fh:
                pixels = pixel_sha256_of(fh, name=record.path.name)
        except UnreadableImage:
            unreadable += 1
            continue
        with files_removed_on_error() as stored, transaction.atomic():
            image = ReferenceImage(
                sha256=digest,
                pixel_sha256=pixels,
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
        "synthetic_refused": synthetic,
        "excluded_by_mapping": sum(dataset.excluded.values()),
    }
    log.info("import %s: %s", root, result)
    return result


def _synthetic(content: bytes) -> str | None:
    """Why an image file is the platform's own generated output (its mark in the metadata
    or the pixels, ``ml.generate.watermark``), or None."""
    import io

    from PIL import Image, UnidentifiedImageError

    from ml.generate.watermark import synthetic_reason

    try:
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            return synthetic_reason(image)
    except (OSError, UnidentifiedImageError, ValueError):
        return None  # unreadable files are counted by the pixel hash below


def _hash(items: list[tuple[str, str, str]]) -> str:
    return hashlib.sha256(json.dumps(sorted(items)).encode()).hexdigest()


SPLIT_RANK: dict[str, int] = {Split.TRAIN: 0, Split.VAL: 1, Split.TEST: 2}


class _Patients:
    """Patients that are one person for splitting: the same key, or the patients of
    two copies of one picture (a reference image uploaded again as a case)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def reference_provenance(image: ReferenceImage) -> dict:
    from ml.data.loaders import LABEL_MAPPING_VERSION

    return {
        "kind": "reference",
        "source": image.source,
        "original_name": image.original_name,
        "sha256": image.sha256,
        "imported_at": image.imported_at.isoformat() if image.imported_at else None,
        "label_mapping_version": LABEL_MAPPING_VERSION,
    }


def case_provenance(image: CaseImage) -> dict:
    from apps.cases.provenance import label_provenance, reader_ref

    return {"kind": "clinical", **label_provenance(image, name=reader_ref)}


def _reference_hash(image: ReferenceImage) -> str:
    """The reference image's pixel hash, computed once and kept on the row."""
    if not image.pixel_sha256:
        image.pixel_sha256 = pixel_sha256(image.file)
        ReferenceImage.objects.filter(pk=image.pk).update(pixel_sha256=image.pixel_sha256)
    return image.pixel_sha256


# What to load with snapshot items for ``item_image`` (one query, not one per item).
ITEM_IMAGES = ("reference_image", "case_image__case")


def item_image(item: SnapshotItem) -> ReferenceImage | CaseImage | None:
    """The image a snapshot item names, or None where there is none to use: withdrawn (its
    case was purged), or of a case its clinician deleted and not purged yet, which every
    page, export and training run treats as gone at once (``Case.objects`` hides it)."""
    if item.reference_image is not None:
        return item.reference_image
    image = item.case_image
    if image is None or image.case.deleted_at is not None:
        return None
    return image


def clinical_patient(image: CaseImage) -> str:
    return f"clinical-{image.case.patient_ref or f'case-{image.case_id}'}"


def _reference_item(image: ReferenceImage, split: str = "") -> SnapshotItem:
    return SnapshotItem(
        reference_image=image,
        label=image.label,
        split=split,
        patient=image.patient,
        source=image.source,
        pixel_sha256=_reference_hash(image),
        provenance=reference_provenance(image),
    )


def _clinical_item(image: CaseImage, split: str = "", pixel_hash: str = "") -> SnapshotItem:
    return SnapshotItem(
        case_image=image,
        label=image.confirmed_label,
        split=split,
        patient=clinical_patient(image),
        source="clinical",
        pixel_sha256=pixel_hash or pixel_sha256(image.file),
        provenance=case_provenance(image),
    )


class _Builder:
    """The items of a new snapshot, one per picture, and what changed on the way."""

    def __init__(self) -> None:
        self.items: list[SnapshotItem] = []
        self.by_hash: dict[str, SnapshotItem] = {}
        self.patients = _Patients()
        self.removed: Counter[tuple[str, str, str, str]] = Counter()
        self.relabelled: list[dict] = []
        self.duplicates: list[dict] = []

    def remove(self, old: SnapshotItem, reason: str) -> None:
        self.removed[(reason, old.split, old.label, old.source)] += 1

    def admit(self, item: SnapshotItem) -> bool:
        """Keep ``item`` unless the same picture is already kept (its patient is then
        the kept copy's patient too)."""
        self.patients.find(item.patient)
        first = self.by_hash.get(item.pixel_sha256)
        if first is not None:
            self.patients.union(first.patient, item.patient)
            self.duplicates.append(
                {
                    "key": item.key,
                    "label": item.label,
                    "same_as": first.key,
                    "kept_label": first.label,
                }
            )
            return False
        self.by_hash[item.pixel_sha256] = item
        self.items.append(item)
        return True

    def assign_splits(self) -> list[dict]:
        """New items go to the split their patient already has (test before val before
        train), else to train; an earlier item whose patient is also in a higher split
        moves there. Returns the moves."""
        held: dict[str, str] = {}
        for item in self.items:
            if item.split:
                root = self.patients.find(item.patient)
                if SPLIT_RANK[item.split] > SPLIT_RANK.get(held.get(root, ""), -1):
                    held[root] = item.split
        moved = []
        for item in self.items:
            target = held.get(self.patients.find(item.patient), Split.TRAIN)
            if not item.split:
                item.split = target
            elif SPLIT_RANK[target] > SPLIT_RANK[item.split]:
                moved.append({"key": item.key, "from": item.split, "to": target})
                item.split = target
        return moved


def _first_split(builder: _Builder, seed: int) -> None:
    """The first snapshot: the reference images, one per picture, split by patient
    (``ml.data.splits``) with the patients of copies counted as one."""
    from ml.data.loaders import Record
    from ml.data.splits import split_records

    references = list(ReferenceImage.objects.order_by("pk"))
    if not references:
        raise NoReferenceImages("No reference images: run `manage.py import_dataset` first.")
    for image in references:
        try:
            builder.admit(_reference_item(image))
        except UnreadableImage as exc:
            log.warning("reference image %s left out: %s", image.pk, exc)
    records = [
        Record(
            path=Path(item.reference_image.file.name),  # type: ignore[union-attr,arg-type]
            label=item.label,
            patient=builder.patients.find(item.patient),
            source=item.source,
        )
        for item in builder.items
    ]
    for item, split in zip(builder.items, split_records(records, seed=seed), strict=True):
        item.split = split


def _carry_over(builder: _Builder, parent: DatasetSnapshot) -> None:
    """The parent's items with their splits and each image's *current* label: a clinical
    image whose label was corrected carries the new one, one now unusable or no longer
    confirmed leaves. Where the parent held one picture twice, the copy in the highest
    split stays."""
    old_items = sorted(
        parent.items.select_related(*ITEM_IMAGES),
        key=lambda i: (-SPLIT_RANK[i.split], i.case_image_id is not None, i.pk),
    )
    for old in old_items:
        image = item_image(old)
        if image is None:  # erased or deleted (apps.cases.retention): never carried over
            builder.remove(old, "withdrawn: its case was deleted or erased")
            continue
        if isinstance(image, CaseImage):
            if not image.confirmed_label:
                builder.remove(old, "no longer confirmed (a verdict was revised)")
                continue
            if image.confirmed_label == UNUSABLE:
                builder.remove(old, "judged unusable")
                continue
            try:
                item = _clinical_item(image, old.split, old.pixel_sha256)
            except UnreadableImage:
                builder.remove(old, "image file unreadable")
                continue
            item.patient = old.patient
        else:
            item = _reference_item(image, old.split)
        if item.label != old.label:
            builder.relabelled.append(
                {"key": item.key, "split": item.split, "from": old.label, "to": item.label}
            )
        if not builder.admit(item):
            builder.remove(old, "copy of another item's image")


@transaction.atomic
def create_snapshot(*, created_by=None, seed: int = 0) -> DatasetSnapshot:
    """Freeze the current training data: which images, which labels, which split.

    The first snapshot splits the reference images by patient (``ml.data.splits``).
    Later ones keep the previous snapshot's items in their splits (the test split
    only grows), each with its image's label *now*; then add the reference images
    imported since and every newly confirmed clinical image. A new image goes to
    the split its patient is already in (so a patient in test stays in test), and
    to train when its patient is new. One picture is one item: images are compared
    by pixel hash (``apps.models.fingerprint``) across reference and clinical data.
    ``changes`` records what changed since the previous snapshot and why.
    """
    parent = DatasetSnapshot.objects.select_for_update().first()
    builder = _Builder()
    carried: set[str] = set()
    if parent is None:
        _first_split(builder, seed)
    else:
        _carry_over(builder, parent)
        carried = {item.key for item in builder.items}
        known = {
            i.reference_image_id
            for i in parent.items.filter(reference_image__isnull=False)
            if i.reference_image_id is not None
        }
        for reference in ReferenceImage.objects.exclude(pk__in=known).order_by("pk"):
            try:
                builder.admit(_reference_item(reference))
            except UnreadableImage as exc:
                log.warning("reference image %s left out: %s", reference.pk, exc)
    known_cases = set()
    if parent is not None:
        known_cases = set(
            parent.items.filter(case_image__isnull=False).values_list("case_image_id", flat=True)
        )
    confirmed = (
        CaseImage.objects.exclude(confirmed_label__in=["", UNUSABLE])
        .exclude(pk__in=known_cases)
        .select_related("case")
        .order_by("pk")
    )
    # An image that left an earlier snapshot (its verdicts were revised) and is
    # confirmed again returns to the split it had, so the test split keeps its images.
    earlier = dict(
        SnapshotItem.objects.filter(case_image__in=confirmed)
        .order_by("snapshot_id")
        .values_list("case_image_id", "split")
    )
    unreadable = 0
    for image in confirmed:
        try:
            builder.admit(_clinical_item(image, earlier.get(image.pk, "")))
        except UnreadableImage as exc:
            unreadable += 1
            log.warning("clinical image %s left out: %s", image.pk, exc)
    moved = builder.assign_splits()
    items = builder.items
    counts = _counts(items)
    changes = {
        "parent": parent.pk if parent else None,
        "added": _table(i for i in items if i.key not in carried),
        "removed": [
            {"reason": reason, "split": split, "label": label, "source": source, "n": n}
            for (reason, split, label, source), n in sorted(builder.removed.items())
        ],
        "relabelled": builder.relabelled,
        "moved": moved,
        "duplicates_left_out": builder.duplicates,
        "unreadable_left_out": unreadable,
    }
    snapshot = DatasetSnapshot.objects.create(
        created_by=created_by,
        parent=parent,
        content_hash=_hash([(i.key, i.label, i.split) for i in items]),
        counts=counts,
        changes=changes,
    )
    for item in items:
        item.snapshot = snapshot
    SnapshotItem.objects.bulk_create(items)
    log.info("snapshot %s: %s", snapshot.pk, {k: counts[k] for k in Split.values})
    return snapshot


def _table(items) -> list[dict]:
    """Counts by split x class x source, as rows."""
    counter = Counter((i.split, i.label, i.source) for i in items)
    return [
        {"split": split, "label": label, "source": source, "n": n}
        for (split, label, source), n in sorted(
            counter.items(), key=lambda kv: (SPLIT_RANK[kv[0][0]], kv[0][1], kv[0][2])
        )
    ]


def _counts(items: list[SnapshotItem]) -> dict:
    counts: dict = {}
    for split in Split.values:
        counter = Counter(i.label for i in items if i.split == split)
        counts[split] = dict(sorted(counter.items()))
    counts["clinical"] = sum(1 for i in items if i.case_image_id)
    counts["total"] = len(items)
    counts["by_split_class_source"] = _table(items)
    return counts


def new_confirmed_labels_since_last_snapshot() -> int:
    """Confirmed labels the last snapshot does not hold: new ones and corrections."""
    last = DatasetSnapshot.objects.first()
    confirmed = CaseImage.objects.exclude(confirmed_label__in=["", UNUSABLE])
    if last is None:
        return confirmed.count()
    held = last.items.filter(case_image_id=OuterRef("pk"), label=OuterRef("confirmed_label"))
    return confirmed.exclude(Exists(held)).count()

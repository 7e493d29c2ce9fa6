"""Retention: deleting a case, purging deleted cases, erasure by patient reference.

* **Delete** (a clinician, their own case): the case is marked deleted and disappears
  at once from every page, list, queue, snapshot-to-be and the API (the default
  managers of ``Case`` and ``CaseImage`` hide it). Audited ``case.delete``.
* **Purge** (Celery beat, ``apps.cases.tasks.purge_deleted_cases``, every
  ``CXR_PURGE_CHECK_SECONDS``): a case deleted more than
  ``CXR_DELETED_CASE_RETENTION_DAYS`` ago loses its rows (images, predictions,
  segmentations, explanations, inspections, verdicts, adjudications) and every file they
  name (uploads, de-identified DICOMs, lung masks, CT masks, heatmaps, overlays,
  inspection pictures), once the deletion commits. Audited ``case.purge``. The days
  between are the window in which a mistaken deletion can still be undone from the
  database (``Case.all_objects``) without restoring a backup.
* **Erasure** (a model admin, a data-protection request): every case of one patient
  reference, deleted or not, is purged at once, files included. The request may name
  the stored reference or the hospital patient ID (turned into its pseudonym with
  ``CXR_PSEUDONYM_KEY``, as DICOM uploads are). Audited ``retention.erasure`` with a
  SHA-256 of the reference (which proves later which reference was erased without
  keeping it), the case ids and counts.

**Labelled images in a snapshot are removed from future snapshots, not kept.** A chest
radiograph stays personal data after de-identification (pseudonymised, not anonymous:
the image itself can identify a patient against other records), and neither a
clinician's deletion nor an erasure request leaves a basis to keep it as reference data.
So when a case is purged, its images' snapshot items are *withdrawn*: the row stays (label,
split, pixel hash, provenance) so the snapshot's counts and the lineage of the models
trained on it stay explainable, but it no longer names an image (``withdrawn_at`` is
set); every later snapshot leaves it out ("withdrawn" in its changes), and a training
run or export of an older snapshot skips it. Models already trained on it are not
retrained: their weights hold no image.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, models, transaction
from django.db.models.deletion import Collector
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from apps.accounts.models import AuditEvent, record
from apps.cases.models import Case, CaseImage
from cxrplatform.errors import Refused

log = logging.getLogger(__name__)


class RetentionRefused(Refused):
    pass


@dataclass
class PurgeResult:
    cases: list[int] = field(default_factory=list)
    images: int = 0
    files: int = 0
    withdrawn_snapshot_items: int = 0

    def add(self, other: PurgeResult) -> None:
        self.cases += other.cases
        self.images += other.images
        self.files += other.files
        self.withdrawn_snapshot_items += other.withdrawn_snapshot_items

    def as_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "images": self.images,
            "files": self.files,
            "withdrawn_snapshot_items": self.withdrawn_snapshot_items,
        }


@transaction.atomic
def delete_case(*, actor: Any, case: Case) -> Case:
    """Mark ``case`` deleted (its owner only): hidden at once, purged later."""
    if case.owner_id != getattr(actor, "pk", None):
        raise RetentionRefused("Only the clinician who created a case can delete it.")
    case = Case.all_objects.select_for_update().get(pk=case.pk)
    if case.deleted_at is not None:
        return case
    case.deleted_at = timezone.now()
    case.save(update_fields=["deleted_at"])
    purge_after = case.deleted_at + timedelta(days=settings.CXR_DELETED_CASE_RETENTION_DAYS)
    record(
        actor=actor,
        action="case.delete",
        target=case,
        after={
            "images": CaseImage.all_objects.filter(case=case).count(),
            "purge_after": purge_after.isoformat(),
        },
    )
    return case


def _stored_files(instances: list[models.Model]) -> set[tuple[Any, str]]:
    """(storage, name) of every file field set on ``instances``."""
    files = set()
    for instance in instances:
        for model_field in instance._meta.concrete_fields:
            if isinstance(model_field, models.FileField):
                value = getattr(instance, model_field.attname)
                if isinstance(value, FieldFile) and value.name:
                    files.add((value.storage, value.name))
    return files


def _purge_one(case: Case) -> PurgeResult:
    """Withdraw the snapshot items of ``case``'s images, delete its rows, and delete its
    files once the transaction commits (inside the caller's transaction)."""
    from apps.models.models import SnapshotItem

    images = list(CaseImage.all_objects.filter(case=case).values_list("pk", flat=True))
    withdrawn = SnapshotItem.objects.filter(case_image_id__in=images).update(
        case_image=None, withdrawn_at=timezone.now()
    )
    collector = Collector(using=DEFAULT_DB_ALIAS)
    collector.collect([case])
    instances: list[models.Model] = [obj for objs in collector.data.values() for obj in objs]
    for queryset in collector.fast_deletes:
        instances += list(queryset) if isinstance(queryset, models.QuerySet) else []
    files = _stored_files(instances)
    case_id = case.pk
    collector.delete()

    def delete_files() -> None:
        for storage, name in sorted(files, key=lambda item: item[1]):
            try:
                storage.delete(name)
            except Exception:
                log.exception("purge of case %s: could not delete a file", case_id)

    transaction.on_commit(delete_files)
    return PurgeResult(
        cases=[case_id], images=len(images), files=len(files), withdrawn_snapshot_items=withdrawn
    )


def purge_deleted_cases(*, now: datetime | None = None) -> dict[str, Any]:
    """Purge every case deleted more than ``CXR_DELETED_CASE_RETENTION_DAYS`` ago, one
    transaction each (beat task)."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.CXR_DELETED_CASE_RETENTION_DAYS)
    total = PurgeResult()
    due = Case.all_objects.filter(deleted_at__isnull=False, deleted_at__lte=cutoff)
    for pk in due.order_by("pk").values_list("pk", flat=True):
        with transaction.atomic():
            case = Case.all_objects.select_for_update().filter(pk=pk).first()
            if case is None or case.deleted_at is None:
                continue
            result = _purge_one(case)
            AuditEvent.objects.create(
                actor=None,
                action="case.purge",
                target_type=Case._meta.label,
                target_id=str(pk),
                after={**result.as_json(), "deleted_at": case.deleted_at.isoformat()},
            )
            total.add(result)
    if total.cases:
        log.info(
            "purged %d deleted case(s): %d image(s), %d file(s)",
            len(total.cases),
            total.images,
            total.files,
        )
    return total.as_json()


def reference_for(*, patient_ref: str = "", hospital_id: str = "") -> str:
    """The stored patient reference an erasure request names: as stored, or the
    pseudonym of a hospital patient ID (``apps.cases.deidentify.pseudonym_for``)."""
    from apps.cases.deidentify import pseudonym_for

    patient_ref, hospital_id = patient_ref.strip(), hospital_id.strip()
    if bool(patient_ref) == bool(hospital_id):
        raise RetentionRefused("Give either the stored patient reference or the hospital ID.")
    if hospital_id:
        return pseudonym_for(hospital_id, key=settings.CXR_PSEUDONYM_KEY)
    return patient_ref


def cases_of_patient(reference: str) -> models.QuerySet[Case]:
    """Every case of a patient reference, deleted or not."""
    if not reference.strip():
        raise RetentionRefused("An empty patient reference names no patient.")
    return Case.all_objects.filter(patient_ref=reference.strip()).order_by("pk")


@transaction.atomic
def erase_patient(*, actor: Any, reference: str) -> dict[str, Any]:
    """Purge every case of ``reference`` now (a data-protection erasure request)."""
    cases = list(cases_of_patient(reference).select_for_update())
    total = PurgeResult()
    for case in cases:
        total.add(_purge_one(case))
    AuditEvent.objects.create(
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        action="retention.erasure",
        target_type=Case._meta.label,
        target_id="",
        after={
            "reference_sha256": hashlib.sha256(reference.strip().encode()).hexdigest(),
            **total.as_json(),
        },
    )
    log.info("erasure request: %d case(s), %d file(s) purged", len(total.cases), total.files)
    return total.as_json()

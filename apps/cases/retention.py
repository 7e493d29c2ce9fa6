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
* **Erasure** (a model admin, a data-protection request): every case of one patient,
  deleted or not, is purged at once, files included. The request names the hospital
  patient ID, the patient reference a clinician typed, or both. The hospital ID is
  turned into its pseudonym with ``CXR_PSEUDONYM_KEY``, as DICOM uploads are, and finds
  every case whose DICOM files carry it (``Case.patient_pseudonym``, kept even where the
  clinician typed their own reference) or whose reference is it; the typed reference
  finds the cases stored under it (a PNG or JPEG upload has no pseudonym: only its
  reference finds it). What each identifier found, and what it did not, is said.
  Finding the cases first (counts only) is audited ``retention.lookup``, the erasure
  ``retention.erasure``: each with a keyed hash of every identifier given (HMAC with
  the pseudonym key: it proves later which patient was named without keeping the
  identifier, and unlike a bare SHA-256 a short reference cannot be found by trying
  every candidate), the counts, and for the erasure the case ids.

**Labelled images in a snapshot are removed from future snapshots, not kept.** A chest
radiograph stays personal data after de-identification (pseudonymised, not anonymous:
the image itself can identify a patient against other records), and neither a
clinician's deletion nor an erasure request leaves a basis to keep it as reference data.
So when a case is purged, its images' snapshot items are *withdrawn*: the row stays (label,
split, pixel hash, provenance without readers' notes) so the snapshot's counts and the
lineage of the models trained on it stay explainable, but it no longer names an image
(``withdrawn_at`` is set); every later snapshot leaves it out ("withdrawn" in its
changes), and a training run or export of an older snapshot skips it, as it skips the
images of a case deleted and not purged yet. Models already trained on it are not
retrained: their weights hold no image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, models, transaction
from django.db.models import Q
from django.db.models.deletion import Collector
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from apps.accounts.models import AuditEvent, keyed_digest, record
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
    from apps.cases.provenance import without_notes
    from apps.models.models import SnapshotItem

    images = list(CaseImage.all_objects.filter(case=case).values_list("pk", flat=True))
    items = SnapshotItem.objects.filter(case_image_id__in=images)
    for pk, provenance in items.values_list("pk", "provenance"):
        kept = without_notes(provenance or {})
        if kept != provenance:  # frozen before snapshots left readers' notes out
            SnapshotItem.objects.filter(pk=pk).update(provenance=kept)
    withdrawn = items.update(case_image=None, withdrawn_at=timezone.now())
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


# The identifiers an erasure request may name, and how the pages say them.
HOSPITAL_ID = "hospital_id"
PATIENT_REF = "patient_ref"
IDENTIFIER_NAMES = {HOSPITAL_ID: "the hospital patient ID", PATIENT_REF: "the patient reference"}


@dataclass(frozen=True)
class Found:
    """One identifier of an erasure request and the cases it names."""

    identifier: str  # HOSPITAL_ID or PATIENT_REF
    digest: str  # keyed hash of the identifier as given: what the audit log keeps
    cases: tuple[int, ...]

    @property
    def statement(self) -> str:
        name = IDENTIFIER_NAMES[self.identifier]
        n = len(self.cases)
        if not n:
            return f"No case was found by {name}."
        return f"{n} case{'s' if n != 1 else ''} found by {name}."


@dataclass(frozen=True)
class PatientLookup:
    """What an erasure request's identifiers name: per identifier, and together."""

    found: tuple[Found, ...]
    images: int

    @property
    def cases(self) -> list[int]:
        return sorted({pk for found in self.found for pk in found.cases})

    @property
    def statements(self) -> list[str]:
        return [found.statement for found in self.found]

    def digests(self) -> dict[str, str]:
        return {f"{found.identifier}_hmac": found.digest for found in self.found}


def _identifiers(*, patient_ref: str, hospital_id: str) -> list[tuple[str, str, str]]:
    """(identifier, value as given, value stored on a case) for each identifier given."""
    from apps.cases.deidentify import pseudonym_for

    patient_ref, hospital_id = patient_ref.strip(), hospital_id.strip()
    if not (patient_ref or hospital_id):
        raise RetentionRefused("Give the hospital patient ID, the patient reference, or both.")
    identifiers = []
    if hospital_id:
        pseudonym = pseudonym_for(hospital_id, key=settings.CXR_PSEUDONYM_KEY)
        identifiers.append((HOSPITAL_ID, hospital_id, pseudonym))
    if patient_ref:
        identifiers.append((PATIENT_REF, patient_ref, patient_ref))
    return identifiers


def check_request(*, patient_ref: str = "", hospital_id: str = "") -> None:
    """Refuse a request that names no patient."""
    _identifiers(patient_ref=patient_ref, hospital_id=hospital_id)


def find_patient(*, patient_ref: str = "", hospital_id: str = "") -> PatientLookup:
    """The cases, deleted or not, that a request's identifiers name (not audited: the
    pages call :func:`look_up_patient` or :func:`erase_patient`). Each value is looked
    for as a stored reference and as a DICOM pseudonym."""
    found = []
    for identifier, given, value in _identifiers(patient_ref=patient_ref, hospital_id=hospital_id):
        cases = Case.all_objects.filter(Q(patient_ref=value) | Q(patient_pseudonym=value))
        found.append(
            Found(
                identifier=identifier,
                digest=keyed_digest(f"erasure-{identifier}", given),
                cases=tuple(cases.order_by("pk").values_list("pk", flat=True)),
            )
        )
    all_cases = {pk for item in found for pk in item.cases}
    images = CaseImage.all_objects.filter(case_id__in=all_cases).count()
    return PatientLookup(found=tuple(found), images=images)


@transaction.atomic
def look_up_patient(*, actor: Any, patient_ref: str = "", hospital_id: str = "") -> PatientLookup:
    """How many cases and images a request names, before erasing: audited
    ``retention.lookup`` (the identifiers' keyed hashes and the counts), since the counts
    themselves say something about a patient."""
    lookup = find_patient(patient_ref=patient_ref, hospital_id=hospital_id)
    AuditEvent.objects.create(
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        action="retention.lookup",
        target_type=Case._meta.label,
        target_id="",
        after={
            **lookup.digests(),
            "found": {found.identifier: len(found.cases) for found in lookup.found},
            "cases": len(lookup.cases),
            "images": lookup.images,
        },
    )
    return lookup


@dataclass(frozen=True)
class Erasure:
    """What an erasure request found and what was purged."""

    lookup: PatientLookup
    purged: PurgeResult


@transaction.atomic
def erase_patient(*, actor: Any, patient_ref: str = "", hospital_id: str = "") -> Erasure:
    """Purge every case that the request's identifiers name, now (a data-protection
    erasure request); audited ``retention.erasure``, also when nothing was found."""
    lookup = find_patient(patient_ref=patient_ref, hospital_id=hospital_id)
    cases = Case.all_objects.filter(pk__in=lookup.cases).select_for_update().order_by("pk")
    total = PurgeResult()
    for case in cases:
        total.add(_purge_one(case))
    AuditEvent.objects.create(
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        action="retention.erasure",
        target_type=Case._meta.label,
        target_id="",
        after={
            **lookup.digests(),
            "found": {found.identifier: list(found.cases) for found in lookup.found},
            **total.as_json(),
        },
    )
    log.info("erasure request: %d case(s), %d file(s) purged", len(total.cases), total.files)
    return Erasure(lookup=lookup, purged=total)

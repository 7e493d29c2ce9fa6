"""Studies received from the PACS become cases through the upload's own service.

Each received instance goes through ``apps.cases.services.create_case``, exactly as an
upload does: the same validation, modality routing, view check, out-of-distribution
gate and de-identification, and the same jobs (a prediction per X-ray, a segmentation
per CT slice). The case's owner is the service account ``CXR_DICOM_SERVICE_USER``, so
the case belongs to that account's site. The instances of one study form one case: a
study received again later (another association, the same original Study Instance UID,
the same service account, its link not erased and its case not deleted) adds its images
to that case through ``apps.cases.services.add_images``, found by the link's keyed hash of
the UID (``StudyLink.study_key``). What the return path needs of the original study goes
only into the protected mapping (:class:`apps.pacs.models.StudyLink`).

A refused instance is logged with its reason, counted (:class:`apps.pacs.models.Refusal`,
``cxr_pacs_instances{outcome="refused"}``) and audited; it is never stored.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import pydicom
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction

from apps.accounts.models import record
from apps.cases.models import Case
from apps.cases.services import add_images, create_case
from apps.cases.validation import UploadRejected, upload_ref
from apps.pacs.models import Refusal, StudyLink
from apps.pacs.protect import seal, study_key, unseal

log = logging.getLogger(__name__)

# What the return path copies from the original study into the objects it sends back.
STUDY_KEYWORDS = (
    "StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
    "IssuerOfPatientID",
)  # fmt: skip
INSTANCE_KEYWORDS = ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "Modality")


class ServiceUserMissingError(RuntimeError):
    pass


@dataclass
class ReceivedInstance:
    """One instance as received: the file bytes and the few header values the return
    path needs (read with pydicom, never logged)."""

    content: bytes
    study: dict[str, str] = field(default_factory=dict)
    instance: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return upload_ref(self.content)

    @classmethod
    def from_bytes(cls, content: bytes) -> ReceivedInstance:
        study: dict[str, str] = {}
        instance: dict[str, str] = {}
        try:
            ds = pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True, force=True)
            study = {k: str(ds.get(k, "") or "") for k in STUDY_KEYWORDS}
            instance = {k: str(ds.get(k, "") or "") for k in INSTANCE_KEYWORDS}
        except Exception as exc:  # a corrupt file: validation refuses it with its reason
            log.info(
                "received instance %s: header unreadable (%s)",
                upload_ref(content),
                type(exc).__name__,
            )
        return cls(content=content, study=study, instance=instance)


def service_user():
    username = settings.CXR_DICOM_SERVICE_USER
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise ServiceUserMissingError(
            f"the DICOM service account {username!r} (CXR_DICOM_SERVICE_USER) does not exist "
            "or is inactive; create it (manage.py dicom_listener --create-service-user)"
        )
    return user


def refuse(*, reason: str, calling_ae: str, address: str, ref: str = "", actor=None) -> Refusal:
    """Log, count and audit one refused instance (nothing of it is stored)."""
    refusal = Refusal.objects.create(
        calling_ae=calling_ae[:16], address=address[:64], reason=reason[:300], upload_ref=ref
    )
    record(
        actor=actor,
        action="pacs.refuse",
        target=refusal,
        after={"calling_ae": calling_ae, "address": address, "reason": reason[:300], "upload": ref},
    )
    log.warning("PACS instance %s from %s@%s refused: %s", ref or "-", calling_ae, address, reason)
    return refusal


def receive_association(
    instances: list[ReceivedInstance], *, calling_ae: str, address: str
) -> list[Case]:
    """The instances of one association: one case per study (by Study Instance UID)."""
    by_study: dict[str, list[ReceivedInstance]] = {}
    for item in instances:
        by_study.setdefault(item.study.get("StudyInstanceUID", ""), []).append(item)
    cases = []
    for items in by_study.values():
        case = receive_study(items, calling_ae=calling_ae, address=address)
        if case is not None:
            cases.append(case)
    return cases


def receive_study(
    instances: list[ReceivedInstance], *, calling_ae: str, address: str
) -> Case | None:
    """One study's instances become one case (the refused ones are left out), or None
    when every instance was refused."""
    owner = service_user()
    remaining = list(instances)
    while remaining:
        files = [
            SimpleUploadedFile(f"{item.ref}.dcm", item.content, "application/dicom")
            for item in remaining
        ]
        try:
            with transaction.atomic():
                key = _lock_study(remaining)
                link = _open_link(key, owner)
                if link is not None:
                    case = link.case
                    images = add_images(case=case, files=files, actor=owner)
                    _extend(link, images, remaining, calling_ae=calling_ae, owner=owner)
                else:
                    case = create_case(
                        owner=owner,
                        files=files,
                        notes=f"Received from the PACS ({calling_ae}).",
                    )
                    _link(case, remaining, calling_ae=calling_ae, owner=owner, key=key)
            return case
        except UploadRejected as exc:
            names = {f"{item.ref}.dcm": item for item in remaining}
            refused = [r for r in exc.rejections if r.filename in names]
            if not refused:  # the study as a whole (mixed modalities, several patients)
                for item in remaining:
                    refuse(
                        reason=exc.problem, calling_ae=calling_ae, address=address,
                        ref=item.ref, actor=owner,
                    )  # fmt: skip
                return None
            for rejection in refused:
                item = names[rejection.filename]
                refuse(
                    reason=rejection.problem, calling_ae=calling_ae, address=address,
                    ref=item.ref, actor=owner,
                )  # fmt: skip
                remaining.remove(item)
    return None


def _lock_study(instances: list[ReceivedInstance]) -> str | None:
    """The study's key (None without a Study Instance UID), locked until the transaction
    ends: two associations of one study at the same moment take turns, so the second
    finds the first one's link instead of making a second case. (SQLite, the demo's
    database, serialises writing transactions anyway.)"""
    uid = next((item.study.get("StudyInstanceUID", "") for item in instances if item.study), "")
    if not uid:
        return None
    key = study_key(uid)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int(key[:15], 16)])
    return key


def _open_link(key: str | None, owner) -> StudyLink | None:
    """The study's link that a later association joins: the same study and service
    account, not erased, its case not deleted."""
    if key is None:
        return None
    return (
        StudyLink.objects.select_for_update(of=("self",))
        .select_related("case")
        .filter(study_key=key, erased_at__isnull=True, case__owner=owner)
        .filter(case__deleted_at__isnull=True)
        .order_by("-received_at", "-pk")
        .first()
    )


def _extend(
    link: StudyLink, images: list, instances: list[ReceivedInstance], *, calling_ae: str, owner
) -> None:
    """Add the new images' original instance UIDs to the link's sealed mapping."""
    mapping = unseal(link.sealed)
    for image, item in zip(images, instances, strict=True):  # add_images keeps the order
        mapping["images"][str(image.pk)] = item.instance
    link.sealed = seal(mapping)
    link.save(update_fields=["sealed"])
    pks = [image.pk for image in images]
    record(
        actor=owner,
        action="pacs.receive",
        target=link.case,
        after={"calling_ae": calling_ae, "images": pks, "uploads": [i.ref for i in instances]},
    )
    log.info("PACS study from %s added %d image(s) to case %s", calling_ae, len(pks), link.case_id)


def _link(
    case: Case, instances: list[ReceivedInstance], *, calling_ae: str, owner, key: str | None
) -> StudyLink:
    study = next((item.study for item in instances if item.study), {})
    images = list(case.images.order_by("pk").values_list("pk", flat=True))
    # create_case stores the images in the order of its files.
    sealed = {
        "study": study,
        "images": {str(pk): item.instance for pk, item in zip(images, instances, strict=True)},
    }
    link = StudyLink.objects.create(
        case=case, calling_ae=calling_ae[:16], sealed=seal(sealed), study_key=key or ""
    )
    record(
        actor=owner,
        action="pacs.receive",
        target=case,
        after={"calling_ae": calling_ae, "images": images, "uploads": [i.ref for i in instances]},
    )
    log.info("PACS study from %s became case %s with %d image(s)", calling_ae, case.pk, len(images))
    return link

"""Case services: the one create path that the web form and the API both call, and the
adding of images to an existing case (a PACS study received over several associations)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from tempfile import SpooledTemporaryFile

from django.conf import settings
from django.core.files.base import File
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from apps.accounts.models import record
from apps.cases.kinds import KINDS, kind_of
from apps.cases.models import Case, CaseImage, Modality
from apps.cases.validation import UploadRejected, validate_image
from apps.sites.services import site_id_of_user
from cxrplatform.files import StoredFiles, files_removed_on_error

log = logging.getLogger(__name__)


def create_case(
    *,
    owner,
    files: Sequence[UploadedFile],
    patient_ref: str = "",
    notes: str = "",
    modality: str = Modality.XRAY,
) -> Case:
    """Store a case with its images and queue one job per image, its study kind's
    (``apps.cases.kinds``): a prediction per X-ray, a segmentation per CT slice.

    ``modality`` is what the clinician marked the upload as; a DICOM file's header
    overrides it (apps.cases.validation), and a case holds one modality. All files are
    validated before anything is written; if any write fails, the database rolls back
    and the files already stored are deleted, so a failed upload leaves nothing behind.
    """
    if modality not in KINDS:
        raise UploadRejected(
            "upload", f"unknown modality {modality!r}; choose one of {', '.join(KINDS)}."
        )
    if not files:
        raise UploadRejected("upload", "choose at least one image.")
    limit = settings.CXR_MAX_IMAGES_PER_CASE
    if len(files) > limit:
        raise UploadRejected("upload", f"{len(files)} images; a case holds at most {limit}.")
    with ExitStack() as spooled:
        validated = _validate_one_at_a_time(files, spooled, modality)
        case_modality = _one_modality([item for item, _, _ in validated])
        return _store_case(owner, validated, patient_ref, notes, case_modality)


def _one_modality(items: list) -> str:
    """The case's modality: every file's must be the same (a DICOM's header may route
    it to CT while the rest of the upload is X-rays)."""
    modalities = {item.modality for item in items}
    if len(modalities) > 1:
        routed = [
            f"{item.original_name} ({kind_of(item.modality).name}"
            f"{' by its DICOM header' if item.modality_source == 'header' else ''})"
            for item in items
        ]
        raise UploadRejected(
            "upload",
            "the upload mixes X-rays and CT slices: " + ", ".join(routed) + ". A case holds "
            "one kind of study; upload them as separate cases.",
        )
    return modalities.pop()


def _validate_one_at_a_time(
    files: Sequence[UploadedFile], spooled: ExitStack, modality: str = Modality.XRAY
) -> list:
    """Validate the files one after the other; what each leaves to store (its PNG and
    de-identified DICOM) waits in a temporary file, not in memory, until all passed."""
    validated, rejections = [], []
    for uploaded in files:
        # Check every file, so one answer names each refused file and its problem.
        try:
            item = validate_image(uploaded, modality=modality)
        except UploadRejected as exc:
            rejections.append(exc)
            continue
        content = spooled.enter_context(_spool(item.content))
        dicom = spooled.enter_context(_spool(item.dicom)) if item.dicom else None
        validated.append((replace(item, content=b"", dicom=b""), content, dicom))
    if rejections:
        raise UploadRejected.of_files(rejections)
    return validated


def _spool(data: bytes) -> SpooledTemporaryFile:
    spool = SpooledTemporaryFile(max_size=1024 * 1024)  # noqa: SIM115 - closed by the ExitStack
    spool.write(data)
    spool.seek(0)
    return spool


def _store_case(owner, validated: list, patient_ref: str, notes: str, modality: str) -> Case:
    """Write the case, its images and their jobs (all or nothing)."""
    items = [item for item, _, _ in validated]
    pseudonym = _patient_pseudonym(items)
    kind = kind_of(modality)
    with files_removed_on_error() as stored, transaction.atomic():
        case = Case.objects.create(
            owner=owner,
            site_id=site_id_of_user(owner.pk),  # the uploader's site, now
            patient_ref=patient_ref.strip() or pseudonym,
            patient_pseudonym=pseudonym,
            notes=notes.strip(),
            modality=modality,
        )
        _store_images(case, validated, kind, stored)
        record(
            actor=owner,
            action="case.create",
            target=case,
            after={
                "images": [image.pk for image in case.images.order_by("pk")],
                "formats": sorted({item.source_format for item in items}),
                "modality": modality,
                # The logs' names of the uploads (hash prefixes), never file names.
                "uploads": [item.upload_ref for item in items],
            },
        )
    log.info(
        "case %s (%s) created by %s with %d image(s): upload(s) %s",
        case.pk, modality, owner, len(validated), ", ".join(item.upload_ref for item in items),
    )  # fmt: skip
    return case


def _store_images(case: Case, validated: list, kind, stored: StoredFiles) -> list[CaseImage]:
    """Write the validated images of ``case`` in the order of their files and start each
    one's job; the caller holds the transaction and the set of stored file names."""
    images = []
    for item, content, dicom in validated:
        image = CaseImage(
            case=case,
            sha256=item.sha256,
            width=item.width,
            height=item.height,
            source_format=item.source_format,
            intake_note=item.note,
            status=CaseImage.Status.HELD if item.held else CaseImage.Status.ACCEPTED,
        )
        image.file.save("upload", File(content), save=False)
        stored.add(image.file.name)
        if dicom is not None:
            image.original.save("upload", File(dicom), save=False)
            stored.add(image.original.name)
        image.save()
        # Sent once this commits; a broker outage then does not undo or fail
        # the upload: the job stays pending and the sweeper queues it.
        kind.start_job(image)
        images.append(image)
    return images


def add_images(*, case: Case, files: Sequence[UploadedFile], actor) -> list[CaseImage]:
    """Add images to an existing case (a PACS study whose images arrive in several
    associations), validated as ``create_case`` validates an upload: every file checked,
    one modality and that the case's, the case's patient (its pseudonym), at most
    ``CXR_MAX_IMAGES_PER_CASE`` images in the case in all. Each image's job is started
    through the case's kind. All or nothing; audited (``case.images_added``). Returns
    the new images in the order of ``files``."""
    if not files:
        raise UploadRejected("upload", "choose at least one image.")
    limit = settings.CXR_MAX_IMAGES_PER_CASE
    _check_total(case.images.count() + len(files), limit)
    with ExitStack() as spooled:
        validated = _validate_one_at_a_time(files, spooled, case.modality)
        items = [item for item, _, _ in validated]
        modality = _one_modality(items)
        if modality != case.modality:
            raise UploadRejected(
                "upload",
                f"the images are {kind_of(modality).name}; this case holds "
                f"{kind_of(case.modality).name} images.",
            )
        if _patient_pseudonym(items) != case.patient_pseudonym:
            raise UploadRejected("upload", "the images belong to another patient than the case's.")
        with files_removed_on_error() as stored, transaction.atomic():
            # The case's row serialises two additions, so the limit holds for both.
            locked = Case.objects.select_for_update().filter(pk=case.pk).first()
            if locked is None:
                raise UploadRejected("upload", "the case no longer exists.")
            _check_total(locked.images.count() + len(files), limit)
            images = _store_images(locked, validated, kind_of(locked.modality), stored)
            record(
                actor=actor,
                action="case.images_added",
                target=locked,
                after={
                    "images": [image.pk for image in images],
                    "formats": sorted({item.source_format for item in items}),
                    "uploads": [item.upload_ref for item in items],
                },
            )
    log.info(
        "case %s: %d image(s) added by %s: upload(s) %s",
        case.pk, len(images), actor, ", ".join(item.upload_ref for item in items),
    )  # fmt: skip
    return images


def _check_total(total: int, limit: int) -> None:
    if total > limit:
        raise UploadRejected("upload", f"{total} images; a case holds at most {limit}.")


def _patient_pseudonym(validated: list) -> str:
    """The DICOM files' pseudonym of the patient ("" without one).

    The case's patient reference is the one typed in, else this pseudonym. A typed
    reference wins when both exist (it is the clinician's own pseudonymous reference),
    and the pseudonym is kept beside it (``Case.patient_pseudonym``), so that an erasure
    request by hospital patient ID finds the case. DICOM files of different patients
    cannot form one case.
    """
    pseudonyms = sorted({item.patient_pseudonym for item in validated if item.patient_pseudonym})
    if len(pseudonyms) > 1:
        raise UploadRejected(
            "upload",
            f"the DICOM files belong to {len(pseudonyms)} different patients; "
            "a case holds the images of one patient.",
        )
    return pseudonyms[0] if pseudonyms else ""


@transaction.atomic
def release_held_image(*, image: CaseImage, actor) -> CaseImage:
    """Release an image held at intake for text in its margins: its owner looked and found
    no patient details there, so it may be offered for expert labelling (and so reach a
    dataset). Audited (``image.release``)."""
    from apps.cases.validation import TEXT_HELD, TEXT_UNCHECKED

    image = CaseImage.objects.select_for_update().get(pk=image.pk)
    if image.status != CaseImage.Status.HELD:
        raise UploadRejected("image", "this image is not held for review.")
    before = {"status": image.status, "intake_note": image.intake_note}
    note = image.intake_note
    for held in (TEXT_HELD, TEXT_UNCHECKED):
        note = note.replace(held, "")
    image.intake_note = (RELEASED + " " + note.strip()).strip()[:300]
    image.status = CaseImage.Status.ACCEPTED
    image.save(update_fields=["status", "intake_note"])
    record(
        actor=actor,
        action="image.release",
        target=image,
        before=before,
        after={"status": image.status, "intake_note": image.intake_note},
    )
    log.info("image %s released from review by %s", image.pk, actor)
    return image


RELEASED = "Released after review: its owner found no patient details in its margins."

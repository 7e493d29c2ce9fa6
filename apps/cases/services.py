"""Case services: the one create path that the web form and the API both call."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from apps.cases.models import Case, CaseImage, Prediction
from apps.cases.validation import UploadRejected, validate_image
from cxrplatform.files import files_removed_on_error
from cxrplatform.jobs import enqueue_job

log = logging.getLogger(__name__)


def create_case(
    *,
    owner,
    files: Sequence[UploadedFile],
    patient_ref: str = "",
    notes: str = "",
) -> Case:
    """Store a case with its images and queue one prediction per image.

    All files are validated before anything is written; if any write fails,
    the database rolls back and the files already stored are deleted, so a
    failed upload leaves nothing behind.
    """
    if not files:
        raise UploadRejected("upload", "choose at least one image.")
    limit = settings.CXR_MAX_IMAGES_PER_CASE
    if len(files) > limit:
        raise UploadRejected("upload", f"{len(files)} images; a case holds at most {limit}.")
    validated, rejections = [], []
    for uploaded in files:
        # Check every file, so one answer names each refused file and its problem.
        try:
            validated.append(validate_image(uploaded))
        except UploadRejected as exc:
            rejections.append(exc)
    if rejections:
        raise UploadRejected.of_files(rejections)
    patient_ref = _patient_ref(patient_ref.strip(), validated)

    with files_removed_on_error() as stored, transaction.atomic():
        case = Case.objects.create(owner=owner, patient_ref=patient_ref, notes=notes.strip())
        for item in validated:
            image = CaseImage(
                case=case,
                sha256=item.sha256,
                width=item.width,
                height=item.height,
                source_format=item.source_format,
            )
            image.file.save("upload", ContentFile(item.content), save=False)
            stored.add(image.file.name)
            if item.dicom:
                image.original.save("upload", ContentFile(item.dicom), save=False)
                stored.add(image.original.name)
            image.save()
            prediction = Prediction.objects.create(image=image)
            # Sent once this commits; a broker outage then does not undo or fail
            # the upload: the prediction stays pending and the sweeper queues it.
            enqueue_job(prediction)
    log.info("case %s created by %s with %d image(s)", case.pk, owner, len(validated))
    return case


def _patient_ref(given: str, validated: list) -> str:
    """The case's patient reference: the one typed in, else the DICOM files' pseudonym.

    A typed reference wins when both exist (it is the clinician's own
    pseudonymous reference; the stored DICOM files still carry the keyed
    pseudonym). DICOM files of different patients cannot form one case.
    """
    pseudonyms = sorted({item.patient_pseudonym for item in validated if item.patient_pseudonym})
    if len(pseudonyms) > 1:
        raise UploadRejected(
            "upload",
            f"the DICOM files belong to {len(pseudonyms)} different patients; "
            "a case holds the images of one patient.",
        )
    return given or (pseudonyms[0] if pseudonyms else "")


class RetryRefused(Exception):  # noqa: N818 - reads as an outcome
    pass


@transaction.atomic
def retry_prediction(*, prediction: Prediction, actor=None) -> Prediction:
    """Queue a failed prediction again (same row, so the case's status follows it).

    Only failed predictions can be retried: a pending or running one is still
    on its way, a done one has its answer. Audited like every user action.
    """
    locked = Prediction.objects.select_for_update().get(pk=prediction.pk)
    if locked.status != Prediction.Status.FAILED:
        raise RetryRefused(
            f"Only a failed prediction can be retried; this one is {locked.get_status_display()}."
        )
    error = locked.error
    locked.reset_for_retry()
    from apps.accounts.models import record

    record(
        actor=actor,
        action="prediction.retry",
        target=locked,
        before={"status": "failed", "error": error[:500]},
        after={"status": "pending"},
    )
    enqueue_job(locked)
    log.info("prediction %s queued again by %s", locked.pk, actor)
    return locked

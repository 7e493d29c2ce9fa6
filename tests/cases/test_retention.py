"""Retention: a clinician deletes their own case (gone at once, files purged after
CXR_DELETED_CASE_RETENTION_DAYS by a beat task), erasure by patient reference for a
data-protection request (model admins, audited), and labelled images in snapshots
withdrawn from future snapshots."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import AuditEvent, keyed_digest
from apps.cases import retention
from apps.cases.deidentify import pseudonym_for
from apps.cases.models import Case, CaseImage, ExpertLabel, Prediction
from apps.explain.models import Explanation
from apps.models.datasets import create_snapshot
from apps.models.models import DatasetSnapshot, SnapshotItem
from tests.conftest import stored_files
from tests.factories import (
    CaseFactory,
    CaseImageFactory,
    ExplanationFactory,
    PredictionFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def _world(owner, patient_ref="PSEUDO-RET-1"):
    """A case with an image, a prediction with a lung mask, a Grad-CAM and a verdict."""
    case = CaseFactory(owner=owner, patient_ref=patient_ref)
    image = CaseImageFactory(case=case)
    prediction = PredictionFactory(image=image)
    prediction.lung_mask.save("mask.png", ContentFile(b"\x89PNG mask"), save=True)
    explanation = ExplanationFactory(image=image, model_version=prediction.model_version)
    annotator = UserFactory(roles=["annotator"])
    ExpertLabel.objects.create(image=image, annotator=annotator, label="normal")
    image.confirmed_label = "normal"
    image.save(update_fields=["confirmed_label"])
    return case, image, prediction, explanation


def _files_of(image, prediction, explanation) -> set[str]:
    return {
        f.name for f in (image.file, prediction.lung_mask, explanation.heatmap, explanation.overlay)
    }


def _snapshot_with(image) -> SnapshotItem:
    snapshot = DatasetSnapshot.objects.create(content_hash="test")
    return SnapshotItem.objects.create(
        snapshot=snapshot,
        case_image=image,
        label="normal",
        split="test",
        patient="p",
        source="clinical",
        pixel_sha256="ab" * 32,
    )


def test_a_clinician_deletes_their_case_and_it_disappears_at_once(client, clinician, media_root):
    case, image, prediction, explanation = _world(clinician)
    client.force_login(clinician)
    assert client.get(reverse("cases:detail", args=[case.pk])).status_code == 200
    detail_link = f'href="{reverse("cases:detail", args=[case.pk])}"'.encode()
    assert detail_link in client.get(reverse("cases:list")).content
    assert client.get(reverse("cases:delete", args=[case.pk])).status_code == 200
    response = client.post(reverse("cases:delete", args=[case.pk]))
    assert response.status_code == 302
    assert response.url == reverse("cases:list")
    assert not Case.objects.filter(pk=case.pk).exists()
    assert Case.all_objects.get(pk=case.pk).deleted_at is not None
    assert client.get(reverse("cases:detail", args=[case.pk])).status_code == 404
    assert client.get(reverse("cases:image-file", args=[image.pk])).status_code == 404
    assert detail_link not in client.get(reverse("cases:list")).content
    api = APIClient()
    api.force_authenticate(clinician)
    assert api.get("/api/v1/cases/").json()["count"] == 0
    assert api.get(f"/api/v1/cases/{case.pk}/").status_code == 404
    assert not CaseImage.objects.filter(pk=image.pk).exists()  # queues, snapshots, API
    # Files stay until the purge.
    names = _files_of(image, prediction, explanation)
    assert names <= {str(p.relative_to(media_root)) for p in stored_files(media_root)}
    event = AuditEvent.objects.get(action="case.delete", target_id=str(case.pk))
    assert event.actor == clinician
    assert event.after["images"] == 1


def test_only_the_cases_own_clinician_can_delete_it(client, clinician, other_clinician, annotator):
    case, *_ = _world(clinician)
    client.force_login(other_clinician)
    assert client.post(reverse("cases:delete", args=[case.pk])).status_code == 404
    client.force_login(annotator)
    assert client.post(reverse("cases:delete", args=[case.pk])).status_code == 403
    assert Case.objects.filter(pk=case.pk).exists()
    with pytest.raises(retention.RetentionRefused):
        retention.delete_case(actor=other_clinician, case=case)


def test_the_purge_waits_for_the_retention_period_then_erases_rows_and_files(
    clinician, media_root, settings, django_capture_on_commit_callbacks
):
    settings.CXR_DELETED_CASE_RETENTION_DAYS = 7
    case, image, prediction, explanation = _world(clinician)
    kept, kept_image, *_ = _world(clinician, patient_ref="PSEUDO-KEEP")
    names = _files_of(image, prediction, explanation)
    retention.delete_case(actor=clinician, case=case)
    now = timezone.now()
    assert retention.purge_deleted_cases(now=now + timedelta(days=6))["cases"] == []
    assert Case.all_objects.filter(pk=case.pk).exists()
    with django_capture_on_commit_callbacks(execute=True):
        result = retention.purge_deleted_cases(now=now + timedelta(days=7, minutes=1))
    assert result["cases"] == [case.pk]
    assert result["images"] == 1
    assert result["files"] == 4
    assert not Case.all_objects.filter(pk=case.pk).exists()
    assert not CaseImage.all_objects.filter(pk=image.pk).exists()
    assert not Prediction.objects.filter(pk=prediction.pk).exists()
    assert not Explanation.objects.filter(pk=explanation.pk).exists()
    assert not ExpertLabel.objects.filter(image_id=image.pk).exists()
    on_disk = {str(p.relative_to(media_root)) for p in stored_files(media_root)}
    assert not names & on_disk
    assert kept_image.file.name in on_disk  # other cases untouched
    assert Case.objects.filter(pk=kept.pk).exists()
    purge = AuditEvent.objects.get(action="case.purge", target_id=str(case.pk))
    assert purge.actor is None
    assert purge.after["files"] == 4


def test_the_beat_task_runs_the_purge(clinician, settings, django_capture_on_commit_callbacks):
    from apps.cases.tasks import purge_deleted_cases

    settings.CXR_DELETED_CASE_RETENTION_DAYS = 0
    case, *_ = _world(clinician)
    retention.delete_case(actor=clinician, case=case)
    with django_capture_on_commit_callbacks(execute=True):
        result = purge_deleted_cases.apply().get()
    assert result["cases"] == [case.pk]
    assert settings.CELERY_BEAT_SCHEDULE["purge-deleted-cases"]["task"] == purge_deleted_cases.name


def test_purged_images_are_withdrawn_from_snapshots_and_left_out_of_the_next(
    clinician, settings, django_capture_on_commit_callbacks, tmp_path
):
    from apps.models.export import _snapshot_rows
    from apps.models.training import _records

    settings.CXR_DELETED_CASE_RETENTION_DAYS = 0
    case, image, *_ = _world(clinician)
    item = _snapshot_with(image)
    retention.delete_case(actor=clinician, case=case)
    with django_capture_on_commit_callbacks(execute=True):
        result = retention.purge_deleted_cases()
    assert result["withdrawn_snapshot_items"] == 1
    item.refresh_from_db()
    assert item.case_image_id is None
    assert item.withdrawn_at is not None
    assert item.is_withdrawn
    assert (item.label, item.split, item.pixel_sha256) == ("normal", "test", "ab" * 32)
    # Training on or exporting the old snapshot skips it; the next snapshot leaves it out.
    assert _records([item], tmp_path) == ([], [])
    assert _snapshot_rows(item.snapshot) == []
    following = create_snapshot()
    assert following.items.count() == 0
    removed = {
        "reason": "withdrawn: its case was deleted or erased",
        "split": "test",
        "label": "normal",
        "source": "clinical",
        "n": 1,
    }
    assert removed in following.changes["removed"]


def test_a_deleted_case_leaves_the_next_snapshot_before_its_purge(clinician):
    case, image, *_ = _world(clinician)
    _snapshot_with(image)
    retention.delete_case(actor=clinician, case=case)
    following = create_snapshot()
    assert following.items.count() == 0
    assert following.changes["removed"][0]["reason"].startswith("withdrawn")


def test_erasure_by_patient_reference_purges_every_case_of_the_patient(
    client, clinician, other_clinician, model_admin, media_root, django_capture_on_commit_callbacks
):
    first, first_image, *_ = _world(clinician, patient_ref="PSEUDO-ERASE")
    second, *_ = _world(other_clinician, patient_ref="PSEUDO-ERASE")
    retention.delete_case(actor=other_clinician, case=second)  # deleted, not purged yet
    other, other_image, *_ = _world(clinician, patient_ref="PSEUDO-OTHER")
    _snapshot_with(first_image)
    client.force_login(model_admin)
    found = client.post(reverse("cases:erasure"), {"patient_ref": "PSEUDO-ERASE"})
    assert found.status_code == 200
    assert b'data-found-cases="2"' in found.content
    assert Case.all_objects.filter(pk=first.pk).exists()  # finding erases nothing
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("cases:erasure"), {"patient_ref": "PSEUDO-ERASE", "confirm": "on"}
        )
    assert response.status_code == 302
    assert not Case.all_objects.filter(pk__in=[first.pk, second.pk]).exists()
    assert Case.objects.filter(pk=other.pk).exists()
    on_disk = {str(p.relative_to(media_root)) for p in stored_files(media_root)}
    assert first_image.file.name not in on_disk
    assert other_image.file.name in on_disk
    event = AuditEvent.objects.get(action="retention.erasure")
    assert event.actor == model_admin
    assert event.after["patient_ref_hmac"] == keyed_digest("erasure-patient_ref", "PSEUDO-ERASE")
    assert sorted(event.after["cases"]) == sorted([first.pk, second.pk])
    assert event.after["withdrawn_snapshot_items"] == 1
    assert "PSEUDO-ERASE" not in str(AuditEvent.objects.filter(action="retention.erasure").values())


def test_erasure_by_hospital_id_finds_the_dicom_pseudonym(client, clinician, model_admin, settings):
    reference = pseudonym_for("HOSP-00123", key=settings.CXR_PSEUDONYM_KEY)
    case, *_ = _world(clinician, patient_ref=reference)
    client.force_login(model_admin)
    client.post(reverse("cases:erasure"), {"hospital_id": "HOSP-00123", "confirm": "on"})
    assert not Case.all_objects.filter(pk=case.pk).exists()


def test_erasure_needs_a_patient_identifier_and_a_model_admin(client, clinician, model_admin):
    client.force_login(clinician)
    assert client.post(reverse("cases:erasure"), {"patient_ref": "X"}).status_code == 403
    client.force_login(model_admin)
    assert client.post(reverse("cases:erasure"), {"confirm": "on"}).status_code == 400
    blank = client.post(reverse("cases:erasure"), {"patient_ref": " ", "confirm": "on"})
    assert blank.status_code == 400
    assert not AuditEvent.objects.filter(action__startswith="retention.").exists()
    with pytest.raises(retention.RetentionRefused):
        retention.find_patient(patient_ref="   ")

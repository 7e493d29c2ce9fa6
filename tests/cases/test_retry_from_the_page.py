"""Retry from the case page: a failed classification or explanation shows its reason and
a retry button; retrying queues the same job again and is audited like the API path."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.cases import services as case_services
from apps.cases.access import image_ref
from apps.cases.models import Prediction
from apps.explain import services
from apps.explain.models import Explanation
from cxrplatform.jobs import run_job_now
from tests.conftest import upload_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed_prediction(clinician, production_model, django_capture_on_commit_callbacks):
    """A classification the sweeper gave up on (its worker vanished)."""
    with django_capture_on_commit_callbacks(execute=False):
        case = case_services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    prediction.mark_running()
    prediction.mark_failed("No result within the 120 s time limit: the worker stopped.")
    return prediction


def test_failed_classification_shows_its_reason_and_a_retry_button(
    login, clinician, failed_prediction
):
    client = login(clinician)
    page = client.get(reverse("cases:detail", args=[failed_prediction.image.case_id]))
    html = page.content.decode()
    assert "Classification failed: No result within the 120 s time limit" in html
    action = reverse("cases:prediction-retry", args=[failed_prediction.image_id])
    assert f'action="{action}"' in html
    assert "Retry classification" in html


def test_owner_retries_a_failed_classification_from_the_page_and_it_runs(
    login, clinician, failed_prediction, django_capture_on_commit_callbacks
):
    client = login(clinician)
    image = failed_prediction.image
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("cases:prediction-retry", args=[image.pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("cases:detail", args=[image.case_id])
    assert len(callbacks) == 1  # the classification task, sent on commit
    failed_prediction.refresh_from_db()
    assert failed_prediction.status == "pending"
    # Audited exactly like the API's retry: same action, the error it replaces.
    event = AuditEvent.objects.get(action="prediction.retry")
    assert event.actor == clinician
    assert "time limit" in event.before["error"]
    assert event.after == {"status": "pending"}

    page = client.get(response["Location"])
    assert "Classification queued again" in page.content.decode()
    assert "Retry classification" not in page.content.decode()

    run_job_now(Prediction, failed_prediction.pk)  # what the queued task does
    failed_prediction.refresh_from_db()
    assert failed_prediction.status == "done"
    assert failed_prediction.attempts == 2


def test_retrying_what_did_not_fail_or_is_not_yours_changes_nothing(
    login, clinician, other_clinician, failed_prediction
):
    url = reverse("cases:prediction-retry", args=[failed_prediction.image_id])
    assert login(other_clinician).post(url).status_code == 404
    assert Prediction.objects.get(pk=failed_prediction.pk).status == "failed"

    Prediction.objects.filter(pk=failed_prediction.pk).update(status="running")
    response = login(clinician).post(url, follow=True)
    assert "Only a failed prediction can be retried" in response.content.decode()
    assert Prediction.objects.get(pk=failed_prediction.pk).status == "running"
    assert not AuditEvent.objects.filter(action="prediction.retry").exists()
    assert login(clinician).get(url).status_code == 405  # POST only


@pytest.fixture
def failed_explanation(clinician, production_model, django_capture_on_commit_callbacks):
    """A real failure: the image file is missing when the worker runs the Grad-CAM."""
    with django_capture_on_commit_callbacks(execute=False):
        case = case_services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    with django_capture_on_commit_callbacks(execute=False):
        run_job_now(Prediction, prediction.pk)
    explanation = Explanation.objects.get(image=prediction.image, method="gradcam")
    stored = Path(prediction.image.file.path)
    aside = stored.with_suffix(".aside")
    stored.rename(aside)
    try:
        run_job_now(Explanation, explanation.pk)
    finally:
        aside.rename(stored)
    explanation.refresh_from_db()
    assert explanation.status == "failed"
    return explanation


@pytest.mark.slow
def test_failed_explanation_shows_its_reason_and_retries_from_the_page(
    login, clinician, failed_explanation, django_capture_on_commit_callbacks
):
    client = login(clinician)
    case_url = reverse("cases:detail", args=[failed_explanation.image.case_id])
    html = client.get(case_url).content.decode()
    assert "Grad-CAM failed: FileNotFoundError" in html
    retry_url = reverse("explain:retry", args=[failed_explanation.pk])
    assert f'action="{retry_url}"' in html
    assert "Retry Grad-CAM" in html

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(retry_url)
    assert response.status_code == 302
    assert response["Location"] == case_url
    assert len(callbacks) == 1
    failed_explanation.refresh_from_db()
    assert failed_explanation.status == "pending"
    event = AuditEvent.objects.get(action="explanation.retry")
    assert event.actor == clinician
    assert "FileNotFoundError" in event.before["error"]
    assert event.after["method"] == "gradcam"

    run_job_now(Explanation, failed_explanation.pk)  # the file is back: it works
    failed_explanation.refresh_from_db()
    assert failed_explanation.status == "done", failed_explanation.error
    assert failed_explanation.attempts == 2
    assert Explanation.objects.filter(image=failed_explanation.image).count() == 1
    html = client.get(case_url).content.decode()
    assert "Retry Grad-CAM" not in html
    assert "deletion AUC" in html


def test_explanation_retry_is_refused_when_it_was_asked_for_again_or_is_not_yours(
    login, clinician, other_clinician, failed_explanation
):
    url = reverse("explain:retry", args=[failed_explanation.pk])
    assert login(other_clinician).post(url).status_code == 404
    # Asked for again through the method menu: a new live row; the old one stays failed.
    again = services.request_explanation(
        image=failed_explanation.image, method="gradcam", requested_by=clinician
    )
    assert again.pk != failed_explanation.pk
    response = login(clinician).post(url, follow=True)
    assert "Grad-CAM was asked for again already; it is pending." in response.content.decode()
    failed_explanation.refresh_from_db()
    assert failed_explanation.status == "failed"
    assert not AuditEvent.objects.filter(action="explanation.retry").exists()


def test_annotators_see_a_failed_explanation_without_a_retry_button(
    login, annotator, failed_explanation, settings
):
    settings.CXR_LABEL_SHOW_MODEL = True
    from apps.cases.models import ExpertLabel

    ExpertLabel.objects.create(image=failed_explanation.image, annotator=annotator, label="normal")
    html = (
        login(annotator)
        .get(reverse("cases:label", args=[image_ref(failed_explanation.image)]))
        .content.decode()
    )
    assert "Grad-CAM failed" in html
    assert "Retry Grad-CAM" not in html
    response = login(annotator).post(reverse("explain:retry", args=[failed_explanation.pk]))
    assert response.status_code == 403


def test_owner_retries_a_failed_ct_segmentation_from_the_page_and_it_runs(
    login, clinician, other_clinician, production_model, ct_tiny_model,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    """A real failure (no production CT segmenter yet), its reason and a retry button on
    the CT case page; after an admin registers one, the retry runs to done."""
    from apps.cases.models import Segmentation
    from apps.models.services import register_artifact
    from tests.ct_uploads import ct_upload

    with django_capture_on_commit_callbacks(execute=False):
        case = case_services.create_case(owner=clinician, files=[ct_upload()], modality="ct")
    segmentation = Segmentation.objects.get(image__case=case)
    run_job_now(Segmentation, segmentation.pk)
    segmentation.refresh_from_db()
    assert segmentation.status == "failed"

    client = login(clinician)
    html = client.get(reverse("cases:detail", args=[case.pk])).content.decode()
    assert "Segmentation failed: " in html
    assert "No production CT segmentation model is registered" in html
    url = reverse("cases:segmentation-retry", args=[segmentation.image_id])
    assert f'action="{url}"' in html
    assert "Retry segmentation" in html

    assert login(other_clinician).post(url).status_code == 404
    client = login(clinician)  # the same test client, logged in again as the owner
    register_artifact(artifact_path=ct_tiny_model, make_production=True, task="ct_segmentation")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(url)
    assert response.status_code == 302
    assert response["Location"] == reverse("cases:detail", args=[case.pk])
    assert len(callbacks) == 1  # the segmentation task, sent on commit
    segmentation.refresh_from_db()
    assert segmentation.status == "pending"
    event = AuditEvent.objects.get(action="segmentation.retry")
    assert event.actor == clinician
    assert "No production CT segmentation model" in event.before["error"]
    page = client.get(response["Location"]).content.decode()
    assert "Segmentation queued again" in page
    assert "Retry segmentation" not in page

    run_job_now(Segmentation, segmentation.pk)  # what the queued task does
    segmentation.refresh_from_db()
    assert segmentation.status == "done"
    assert segmentation.lung_area is not None
    assert segmentation.lung_area > 0
    response = client.post(url, follow=True)  # done: nothing to retry
    assert "Only a failed segmentation can be retried" in response.content.decode()
    assert AuditEvent.objects.filter(action="segmentation.retry").count() == 1


def test_the_one_retry_view_takes_any_kind_of_job_on_an_image_by_its_label_and_id(
    login, clinician, other_clinician, failed_prediction, django_capture_on_commit_callbacks
):
    url = reverse("cases:job-retry", args=["cases.prediction", failed_prediction.pk])
    assert url == f"/cases/jobs/cases.prediction/{failed_prediction.pk}/retry/"
    assert login(other_clinician).post(url).status_code == 404
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = login(clinician).post(url)
    assert response["Location"] == reverse("cases:detail", args=[failed_prediction.image.case_id])
    assert len(callbacks) == 1
    assert Prediction.objects.get(pk=failed_prediction.pk).status == "pending"
    assert AuditEvent.objects.get(action="prediction.retry").actor == clinician
    # A kind that is not a job on a case image, or no kind at all: nothing to retry here.
    for label in ("registry.trainingrun", "cases.nothing"):
        assert login(clinician).post(reverse("cases:job-retry", args=[label, 1])).status_code == 404

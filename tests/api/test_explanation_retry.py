"""POST /api/v1/explanations/{id}/retry/: the API twin of the case page's retry button for
a failed explanation (the same service, the same audit event)."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.accounts.models import AuditEvent
from apps.cases import services as case_services
from apps.cases.models import Prediction
from apps.explain import services
from apps.explain.models import Explanation
from cxrplatform.jobs import run_job_now
from tests.conftest import upload_of

pytestmark = pytest.mark.django_db


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
def test_the_owner_retries_a_failed_explanation_and_it_runs(
    api_as, clinician, failed_explanation, django_capture_on_commit_callbacks
):
    url = f"/api/v1/explanations/{failed_explanation.pk}/retry/"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api_as(clinician).post(url)
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["id"], body["status"], body["method"]) == (
        failed_explanation.pk,
        "pending",
        "gradcam",
    )
    assert response["Location"].endswith(f"/api/v1/explanations/{failed_explanation.pk}/")
    assert len(callbacks) == 1  # the explanation task, sent on commit
    event = AuditEvent.objects.get(action="explanation.retry")
    assert event.actor == clinician
    assert event.before["status"] == "failed"

    run_job_now(Explanation, failed_explanation.pk)  # what the queued task does
    failed_explanation.refresh_from_db()
    assert failed_explanation.status == "done"
    again = api_as(clinician).post(url)
    assert again.status_code == 409
    assert "Only a failed explanation can be retried" in again.json()["error"]["message"]
    assert AuditEvent.objects.filter(action="explanation.retry").count() == 1


@pytest.mark.slow
def test_a_retry_is_refused_when_the_map_was_asked_for_again(
    api_as, clinician, other_clinician, annotator, failed_explanation,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    url = f"/api/v1/explanations/{failed_explanation.pk}/retry/"
    assert api_as(other_clinician).post(url).status_code == 404
    assert api_as(annotator).post(url).status_code == 403
    with django_capture_on_commit_callbacks(execute=False):
        services.request_explanation(image=failed_explanation.image, method="gradcam")
    response = api_as(clinician).post(url)
    assert response.status_code == 409
    assert "was asked for again already" in response.json()["error"]["message"]
    assert Explanation.objects.get(pk=failed_explanation.pk).status == "failed"
    assert not AuditEvent.objects.filter(action="explanation.retry").exists()

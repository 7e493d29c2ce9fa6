"""POST /api/v1/images/{id}/prediction/retry/: a failed classification can be queued again."""

from __future__ import annotations

import pytest

from apps.accounts.models import AuditEvent
from apps.cases import services
from apps.cases.models import Prediction
from cxrplatform.jobs import run_job_now
from tests.conftest import upload_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed_prediction(clinician, production_model):
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    prediction.mark_running()
    prediction.mark_failed("No result within the 120 s time limit: the worker stopped.")
    return prediction


def test_owner_retries_a_failed_prediction_and_it_runs_again(
    api_as, failed_prediction, clinician, django_capture_on_commit_callbacks
):
    image = failed_prediction.image
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api_as("clinician").post(f"/api/v1/images/{image.pk}/prediction/retry/")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["prediction"]["status"] == "pending"
    assert body["prediction"]["id"] == failed_prediction.pk
    assert response["Location"].endswith(f"/api/v1/images/{image.pk}/")
    assert len(callbacks) == 1  # the classification task, sent on commit
    event = AuditEvent.objects.get(action="prediction.retry")
    assert event.actor == clinician
    assert "time limit" in event.before["error"]

    # What the queued task does: the same row runs to done, the case is done.
    run_job_now(Prediction, failed_prediction.pk)
    failed_prediction.refresh_from_db()
    assert failed_prediction.status == "done"
    assert failed_prediction.attempts == 2
    assert failed_prediction.error == ""
    assert image.case.status == "done"


def test_a_prediction_that_did_not_fail_cannot_be_retried(api_as, failed_prediction):
    Prediction.objects.filter(pk=failed_prediction.pk).update(status="running")
    response = api_as("clinician").post(
        f"/api/v1/images/{failed_prediction.image_id}/prediction/retry/"
    )
    assert response.status_code == 409
    assert "Only a failed prediction" in response.json()["error"]["message"]
    assert Prediction.objects.get(pk=failed_prediction.pk).status == "running"


def test_another_clinician_cannot_retry_and_does_not_learn_the_image_exists(
    api_as, failed_prediction
):
    response = api_as("other_clinician").post(
        f"/api/v1/images/{failed_prediction.image_id}/prediction/retry/"
    )
    assert response.status_code == 404
    assert Prediction.objects.get(pk=failed_prediction.pk).status == "failed"

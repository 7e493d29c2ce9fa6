"""A deleted case is gone at once for its jobs too: a failed job of one (an explanation,
a classification) cannot be retried from the web or the API (a 404, as for any other
access to a deleted case), and no retry returns its data."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from apps.accounts.models import AuditEvent
from apps.cases import retention
from apps.cases.models import Prediction
from apps.explain.models import Explanation
from tests.factories import ExplanationFactory, PredictionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed_explanation_of_a_deleted_case(clinician) -> Explanation:
    explanation = ExplanationFactory(
        image__case__owner=clinician,
        status=Explanation.Status.FAILED,
        error="the image file was missing",
        heatmap="",
        overlay="",
        scores={},
    )
    retention.delete_case(actor=clinician, case=explanation.image.case)
    return explanation


def test_a_deleted_cases_failed_explanation_cannot_be_retried_on_the_web(
    client, clinician, failed_explanation_of_a_deleted_case
):
    explanation = failed_explanation_of_a_deleted_case
    client.force_login(clinician)
    assert client.post(reverse("explain:retry", args=[explanation.pk])).status_code == 404
    explanation.refresh_from_db()
    assert explanation.status == Explanation.Status.FAILED
    assert not AuditEvent.objects.filter(action="explanation.retry").exists()


def test_a_deleted_cases_failed_explanation_cannot_be_retried_through_the_api(
    clinician, failed_explanation_of_a_deleted_case
):
    explanation = failed_explanation_of_a_deleted_case
    api = APIClient()
    api.force_authenticate(clinician)
    response = api.post(f"/api/v1/explanations/{explanation.pk}/retry/")
    assert response.status_code == 404
    assert "the image file was missing" not in response.content.decode()
    assert "gradcam" not in response.content.decode()  # none of the job's data
    explanation.refresh_from_db()
    assert explanation.status == Explanation.Status.FAILED
    assert not AuditEvent.objects.filter(action="explanation.retry").exists()


def test_a_deleted_cases_failed_classification_cannot_be_retried_by_its_job_id(client, clinician):
    prediction = PredictionFactory(
        image__case__owner=clinician,
        status=Prediction.Status.FAILED,
        model_version=None,
        label="",
        probabilities={},
        error="the worker ran out of memory",
    )
    retention.delete_case(actor=clinician, case=prediction.image.case)
    client.force_login(clinician)
    url = reverse("cases:job-retry", args=["cases.prediction", prediction.pk])
    assert client.post(url).status_code == 404
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.FAILED
    assert not AuditEvent.objects.filter(action="prediction.retry").exists()

"""Deconvolution as a platform explanation: requested like the other methods, computed
by the explain job with the same raw map, overlay, faithfulness scores and lung share."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from apps.cases import services as case_services
from apps.cases.models import Prediction
from apps.explain import services
from apps.explain.models import Explanation
from cxrplatform.jobs import run_job_now
from tests.conftest import upload_of

pytestmark = pytest.mark.django_db


@pytest.mark.slow
def test_deconvolution_is_offered_and_stored_like_every_other_method(
    clinician, login, production_model, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        case = case_services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    with django_capture_on_commit_callbacks(execute=False):
        run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    client = login(clinician)
    page = client.get(reverse("cases:detail", args=[case.pk])).content.decode()
    assert '<option value="deconvnet">Deconvolution</option>' in page

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            reverse("explain:request", args=[prediction.image_id]),
            {"method": "deconvnet"},
            HTTP_ACCEPT="application/json",
        )
    assert response.status_code == 202
    assert len(callbacks) == 1
    explanation = Explanation.objects.get(pk=response.json()["id"])
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    assert explanation.status == "done", explanation.error
    assert explanation.get_method_display() == "Deconvolution"
    assert explanation.params["activations"] == "deconvnet"
    assert explanation.target_label == prediction.label
    with explanation.heatmap.open("rb") as fh:
        values = np.load(io.BytesIO(fh.read()))
    size = production_model.card["preprocessing"]["input_size"]
    assert values.shape == (size, size)
    assert values.max() == pytest.approx(1.0)
    with explanation.overlay.open("rb") as fh:
        assert Image.open(io.BytesIO(fh.read())).format == "PNG"
    assert 0.0 <= explanation.scores["deletion_auc"] <= 1.0
    assert 0.0 <= explanation.scores["insertion_auc"] <= 1.0
    assert explanation.mass_in_lungs is not None
    # Asking again returns the same map (one live job per image, method and model).
    again = services.request_explanation(
        image=prediction.image, method="deconvnet", requested_by=clinician
    )
    assert again.pk == explanation.pk

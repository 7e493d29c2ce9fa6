"""Occlusion of a model fed images blanked outside the lungs (the bundled cxr-lungs,
preprocessing v2 with mask_outside): the explain job's patches fill only what the model
was shown, and the stored parameters say so; a model without the mask keeps the image
mean over the whole patch."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from apps.cases import services as case_services
from apps.cases.models import Prediction
from apps.explain import services
from apps.explain.models import Explanation
from apps.models.services import register_artifact
from cxrplatform.jobs import run_job_now
from tests.conftest import upload_of

# Occlusion on a real lung-masked classifier: TensorFlow-heavy.
pytestmark = [pytest.mark.django_db, pytest.mark.slow]

LUNGS = Path(settings.BASE_DIR) / "ml" / "bundled" / "cxr-lungs" / "cxr-lungs.keras"


def _occlusion_params(clinician, django_capture_on_commit_callbacks) -> dict:
    with django_capture_on_commit_callbacks(execute=False):
        case = case_services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    with django_capture_on_commit_callbacks(execute=False):
        run_job_now(Prediction, prediction.pk)
        explanation = services.request_explanation(image=prediction.image, method="occlusion")
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    assert explanation.status == "done", explanation.error
    return explanation.params


def test_occlusion_of_the_masked_model_fills_only_the_lungs(
    clinician, django_capture_on_commit_callbacks
):
    version = register_artifact(artifact_path=LUNGS, make_production=True)
    assert version.card["preprocessing"]["mask_outside"] is True
    params = _occlusion_params(clinician, django_capture_on_commit_callbacks)
    assert params["fill"] == "visible-mean"
    assert params["fills"] == "visible pixels only"
    assert 0.0 < params["fill_value"] < 1.0


def test_occlusion_of_an_unmasked_model_fills_the_whole_patch(
    clinician, production_model, django_capture_on_commit_callbacks
):
    params = _occlusion_params(clinician, django_capture_on_commit_callbacks)
    assert params["fill"] == "image-mean"
    assert "fills" not in params

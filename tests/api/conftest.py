"""A small world for API tests: two clinicians' cases with real predictions and a
real Grad-CAM (the tiny test model), reference data, a training run and model
versions to promote and roll back to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from knox.models import AuthToken
from rest_framework.test import APIClient

from apps.cases import services
from apps.cases.models import Case, CaseImage, Prediction, Segmentation
from apps.explain.models import Explanation
from apps.models import services as registry
from apps.models.datasets import import_reference_dataset
from apps.models.models import ModelVersion, TrainingRun
from cxrplatform.jobs import run_job_now
from tests.conftest import IMAGES, upload_of
from tests.factories import ModelVersionFactory

ROLES = ["anonymous", "clinician", "other_clinician", "annotator", "model_admin"]


@dataclass
class World:
    case: Case
    image: CaseImage
    explanation: Explanation
    other_case: Case
    production: ModelVersion
    candidate: ModelVersion
    previous: ModelVersion
    run: TrainingRun
    token_id: str  # the id (not the secret) of one of the first clinician's API tokens
    ct_image: CaseImage | None = None  # a segmented CT slice of the first clinician's
    site: Any = None  # the site every account and case of the world is at (where a test sets it)


def segmented_ct_case(owner, *uploads, patient_ref: str = "PSEUDO-CT-1") -> Case:
    """A CT case whose segmentations ran (in this process, on the production CT model)."""
    from tests.ct_uploads import ct_upload

    case = services.create_case(
        owner=owner, files=list(uploads) or [ct_upload()], patient_ref=patient_ref, modality="ct"
    )
    for segmentation in Segmentation.objects.filter(image__case=case):
        run_job_now(Segmentation, segmentation.pk)
    return case


def predicted_case(owner, *names: str, patient_ref: str = "PSEUDO-API-1") -> Case:
    """A case whose predictions ran (in this process, on the tiny model)."""
    case = services.create_case(
        owner=owner,
        files=[upload_of(n) for n in names or ("2168a917.jpg",)],
        patient_ref=patient_ref,
    )
    for prediction in Prediction.objects.filter(image__case=case):
        run_job_now(Prediction, prediction.pk)
    return case


def build_world(clinician, other_clinician, model_admin, production_model) -> World:
    """The world's rows and files, for these users and this registered production model."""
    case = predicted_case(clinician)
    image = case.images.get()
    explanation = Explanation.objects.get(image=image, method="gradcam")
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    assert explanation.status == "done", explanation.error
    other_case = predicted_case(other_clinician, "IM-0117-0001.jpeg", patient_ref="PSEUDO-API-2")

    # Registry rows: a candidate to promote and an earlier production version to roll back to.
    artifact = production_model.artifact.name
    previous = ModelVersionFactory(
        name="previous", sha256="a" * 64, artifact=artifact, archived=True
    )
    candidate = ModelVersionFactory(name="candidate", sha256="b" * 64, artifact=artifact)
    import_reference_dataset(IMAGES / "manifest.csv", "generic")
    run = registry.start_training_run(requested_by=model_admin)
    token_id = AuthToken.objects.create(user=clinician)[0].token_key
    return World(
        case, image, explanation, other_case, production_model, candidate, previous, run, token_id
    )


@pytest.fixture
def world(clinician, other_clinician, model_admin, production_model) -> World:
    return build_world(clinician, other_clinician, model_admin, production_model)


@pytest.fixture
def users(clinician, other_clinician, annotator, model_admin) -> dict:
    return {
        "anonymous": None,
        "clinician": clinician,
        "other_clinician": other_clinician,
        "annotator": annotator,
        "model_admin": model_admin,
    }


@pytest.fixture
def api_as(users):
    """``api_as("clinician")``: an APIClient sending that user's token."""

    def _client(role: str) -> APIClient:
        client = APIClient()
        user = users[role] if isinstance(role, str) else role
        if user is not None:
            _, token = AuthToken.objects.create(user=user)  # unaudited: a fixture's row
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        return client

    return _client

"""The factories' rows read like those a finished job leaves: the API serves them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from apps.models.models import ModelVersion
from tests.conftest import IMAGES
from tests.factories import (
    CaseImageFactory,
    ExplanationFactory,
    ModelVersionFactory,
    PredictionFactory,
)

pytestmark = pytest.mark.django_db


def _content(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_factory_prediction_and_explanation_are_served_to_the_cases_owner(api_as, clinician):
    image = CaseImageFactory(case__owner=clinician, fixture="IM-0117-0001.jpeg")
    version = ModelVersionFactory(production=True)
    PredictionFactory(image=image, model_version=version)
    explanation = ExplanationFactory(image=image, model_version=version)
    client = api_as("clinician")

    body = client.get(f"/api/v1/images/{image.pk}/").json()
    assert body["prediction"]["label"] == "normal"
    assert body["prediction"]["status"] == "done"
    assert [e["id"] for e in body["explanations"]] == [explanation.pk]
    original = client.get(f"/api/v1/images/{image.pk}/file/")
    assert original["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(_content(original))) as served:
        assert served.tobytes() == Image.open(IMAGES / "IM-0117-0001.jpeg").tobytes()
    assert (image.width, image.height) == Image.open(IMAGES / "IM-0117-0001.jpeg").size
    heatmap = np.load(io.BytesIO(_content(client.get(body["explanations"][0]["heatmap_url"]))))
    assert heatmap.dtype == np.float32
    assert 0.0 <= heatmap.min() <= heatmap.max() <= 1.0
    overlay = client.get(body["explanations"][0]["overlay_url"])
    assert overlay["Content-Type"] == "image/png"
    # Someone else's: not found, as for any case.
    assert api_as("other_clinician").get(f"/api/v1/images/{image.pk}/").status_code == 404


def test_model_version_traits_set_status_and_promotion_time():
    production = ModelVersionFactory(production=True)
    archived = ModelVersionFactory(archived=True)
    candidate = ModelVersionFactory()
    assert production.status == ModelVersion.Status.PRODUCTION
    assert archived.status == ModelVersion.Status.ARCHIVED
    assert archived.promoted_at is not None
    assert production.promoted_at is not None
    assert archived.promoted_at < production.promoted_at
    assert candidate.status == ModelVersion.Status.CANDIDATE
    assert candidate.promoted_at is None
    assert len({production.sha256, archived.sha256, candidate.sha256}) == 3


def test_pending_traits_leave_no_results():
    prediction = PredictionFactory(pending=True)
    explanation = ExplanationFactory(pending=True)
    assert (prediction.status, prediction.label, prediction.model_version) == ("pending", "", None)
    assert (explanation.status, explanation.heatmap.name) == ("pending", "")

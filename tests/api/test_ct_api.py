"""CT through the REST API: create a CT case, read its figures and mask PNGs, retry a
failed segmentation, promote and roll back within a task; the schema documents it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from apps.cases.models import Segmentation
from apps.models.models import ModelVersion
from cxrplatform.jobs import run_job_now
from ml.ct.modality import CT_LOOKS_LIKE_XRAY
from tests.api.conftest import predicted_case, segmented_ct_case
from tests.conftest import upload_of
from tests.ct_uploads import MEDSEG_SLICE, ct_dicom, ct_upload

pytestmark = pytest.mark.django_db


@pytest.mark.slow
def test_a_clinician_creates_a_ct_case_and_reads_its_figures_and_masks(
    api_as, clinician, ct_production_model
):
    client = api_as("clinician")
    response = client.post(
        "/api/v1/cases/",
        {"images": [ct_upload(), ct_upload(MEDSEG_SLICE)], "modality": "ct"},
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["modality"] == "ct"
    assert body["status"] == "processing"
    assert [image["modality"] for image in body["images"]] == ["ct", "ct"]
    assert all(image["prediction"] is None for image in body["images"])
    assert [image["segmentation"]["status"] for image in body["images"]] == ["pending"] * 2
    assert body["images"][0]["segmentation"]["masks"] is None

    for segmentation in Segmentation.objects.all():
        run_job_now(Segmentation, segmentation.pk)
    image_id = body["images"][1]["id"]
    figures = client.get(f"/api/v1/images/{image_id}/segmentation/").json()
    assert figures["status"] == "done"
    assert figures["model_version"]["id"] == ct_production_model.pk
    assert figures["lungs_found"] in (True, False)
    if figures["lungs_found"]:
        assert 0.0 <= figures["percent_affected"] <= 100.0
    assert set(figures["masks"]) == {"lungs", "ggo", "consolidation", "infection", "lung_outline"}
    detail = client.get(f"/api/v1/images/{image_id}/").json()
    assert detail["segmentation"]["percent_affected"] == figures["percent_affected"]

    mask = client.get(figures["masks"]["infection"])
    assert mask.status_code == 200
    assert mask["Content-Type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(b"".join(mask.streaming_content))))
    assert pixels.shape == (detail["height"], detail["width"])
    assert int((pixels > 0).sum()) == figures["infection_area"]
    unknown = client.get(f"/api/v1/images/{image_id}/segmentation/masks/liver/")
    assert unknown.status_code == 404
    assert "choose one of lungs, ggo" in unknown.json()["error"]["message"]


def test_a_ct_dicom_is_a_ct_case_without_a_mark(api_as, clinician):
    response = api_as("clinician").post(
        "/api/v1/cases/", {"images": [ct_dicom()]}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    assert response.json()["modality"] == "ct"


def test_an_xray_sent_as_ct_is_refused_with_the_message(api_as, clinician):
    response = api_as("clinician").post(
        "/api/v1/cases/",
        {"images": [upload_of("2168a917.jpg")], "modality": "ct"},
        format="multipart",
    )
    assert response.status_code == 400
    assert CT_LOOKS_LIKE_XRAY in response.json()["error"]["message"]


def test_a_multi_frame_ct_volume_is_refused_as_unsupported(api_as, clinician):
    response = api_as("clinician").post(
        "/api/v1/cases/", {"images": [ct_dicom(frames=3)]}, format="multipart"
    )
    assert response.status_code == 415
    assert "CT volume of 3 slices" in response.json()["error"]["message"]


def test_an_xray_has_no_segmentation(api_as, clinician, production_model):
    image = predicted_case(clinician).images.get()
    client = api_as("clinician")
    assert client.get(f"/api/v1/images/{image.pk}/").json()["segmentation"] is None
    response = client.get(f"/api/v1/images/{image.pk}/segmentation/")
    assert response.status_code == 404
    assert "not a CT slice" in response.json()["error"]["message"]


def test_a_failed_segmentation_is_retried(api_as, clinician, ct_tiny_model):
    case = segmented_ct_case(clinician)  # no production CT model yet: it fails
    image = case.images.get()
    assert image.latest_segmentation is not None
    assert image.latest_segmentation.status == "failed"
    client = api_as("clinician")
    response = client.post(f"/api/v1/images/{image.pk}/segmentation/retry/")
    assert response.status_code == 202
    assert response.json()["segmentation"]["status"] == "pending"
    again = client.post(f"/api/v1/images/{image.pk}/segmentation/retry/")
    assert again.status_code == 409


def test_promoting_and_rolling_back_a_ct_model_leaves_the_classifier_serving(
    api_as, production_model, ct_production_model
):
    from tests.factories import ModelVersionFactory

    earlier = ModelVersionFactory(
        name="ct-earlier",
        sha256="c" * 64,
        artifact=ct_production_model.artifact.name,
        task="ct_segmentation",
        archived=True,
    )
    client = api_as("model_admin")
    listed = {v["id"]: v["task"] for v in client.get("/api/v1/models/").json()["results"]}
    assert listed[ct_production_model.pk] == "ct_segmentation"
    assert listed[production_model.pk] == "classification"
    rolled = client.post("/api/v1/models/rollback/", {"task": "ct_segmentation"}, format="json")
    assert rolled.status_code == 200, rolled.json()
    assert rolled.json()["id"] == earlier.pk
    assert ModelVersion.objects.production(task="ct_segmentation") == earlier
    assert ModelVersion.objects.production() == production_model
    promoted = client.post(f"/api/v1/models/{ct_production_model.pk}/promote/", {}, format="json")
    assert promoted.status_code == 200
    assert ModelVersion.objects.production(task="ct_segmentation") == ct_production_model
    assert ModelVersion.objects.production() == production_model


@pytest.mark.slow
def test_the_schema_documents_the_ct_endpoints_and_the_modality_field(api_as):
    schema = api_as("anonymous").get("/api/v1/schema/?format=json").json()
    paths = schema["paths"]
    assert "/api/v1/images/{id}/segmentation/" in paths
    assert "/api/v1/images/{id}/segmentation/masks/{kind}/" in paths
    assert "/api/v1/images/{id}/segmentation/retry/" in paths
    create = schema["components"]["schemas"]["CaseCreateRequest"]["properties"]
    assert "modality" in create
    figures = schema["components"]["schemas"]["Segmentation"]["properties"]
    assert {"percent_affected", "percent_ggo", "percent_consolidation", "masks"} <= set(figures)

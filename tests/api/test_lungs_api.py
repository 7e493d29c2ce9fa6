"""Lung fields in the API: per image in the case detail, the mask and outline PNGs
behind the same permission as the image, mass_in_lungs in every explanation's scores."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.django_db


def _png(response) -> Image.Image:
    image = Image.open(io.BytesIO(b"".join(response.streaming_content)))
    image.load()
    return image


@pytest.mark.slow
def test_case_detail_gives_each_image_its_lung_fields_and_mask_urls(world, api_as):
    client = api_as("clinician")
    body = client.get(f"/api/v1/cases/{world.case.pk}/").json()
    image = body["images"][0]
    lungs = image["lungs"]
    assert lungs["found"] is True
    assert lungs["message"] == ""
    assert re.fullmatch(r"lung-unet@[0-9a-f]{12}", lungs["segmenter_version"])
    assert 0.04 < lungs["area_fraction"] < 0.65
    top, left, bottom, right = lungs["bbox"]
    assert 0 <= top < bottom <= image["height"]
    assert 0 <= left < right <= image["width"]
    assert lungs["mask_url"] == f"http://testserver/api/v1/images/{image['id']}/lung-mask/"
    assert lungs["outline_url"] == f"http://testserver/api/v1/images/{image['id']}/lung-outline/"

    mask_response = client.get(lungs["mask_url"])
    assert mask_response.status_code == 200
    assert mask_response["Content-Type"] == "image/png"
    mask = _png(mask_response)
    assert mask.mode == "L"
    assert mask.size == (image["width"], image["height"])
    lung = np.asarray(mask) == 255
    assert lung.mean() == pytest.approx(lungs["area_fraction"], abs=1e-6)
    rows, cols = np.flatnonzero(lung.any(axis=1)), np.flatnonzero(lung.any(axis=0))
    assert lungs["bbox"] == [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]

    outline = _png(client.get(lungs["outline_url"]))
    assert outline.mode == "RGBA"
    assert outline.size == mask.size


@pytest.mark.slow
def test_every_explanation_reports_its_mass_in_lungs(world, api_as):
    client = api_as("clinician")
    image = client.get(f"/api/v1/images/{world.image.pk}/").json()
    explanations = image["explanations"]
    assert explanations
    for explanation in explanations:
        assert explanation["status"] == "done"
        assert 0.0 <= explanation["scores"]["mass_in_lungs"] <= 1.0
    detail = client.get(f"/api/v1/explanations/{world.explanation.pk}/").json()
    world.explanation.refresh_from_db()
    assert detail["scores"]["mass_in_lungs"] == world.explanation.mass_in_lungs


@pytest.mark.parametrize(
    ("role", "expected"),
    [("anonymous", 401), ("other_clinician", 404), ("annotator", 403), ("model_admin", 403)],
)
@pytest.mark.slow
def test_lung_files_follow_the_image_permissions(world, api_as, role, expected):
    client = api_as(role)
    for kind in ("lung-mask", "lung-outline"):
        response = client.get(f"/api/v1/images/{world.image.pk}/{kind}/")
        assert response.status_code == expected, kind
        if expected != 200:
            assert response.json()["error"]["status"] == expected


@pytest.mark.slow
def test_an_image_without_a_lung_mask_answers_404_and_says_why(world, api_as):
    from apps.cases.models import Prediction

    prediction = Prediction.objects.get(image=world.image)
    prediction.lungs_found = False
    prediction.lung_message = "lung fields not found: is this a frontal chest X-ray? (one region)"
    prediction.save(update_fields=["lungs_found", "lung_message"])
    client = api_as("clinician")
    response = client.get(f"/api/v1/images/{world.image.pk}/lung-mask/")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "This image has no lung mask."
    lungs = client.get(f"/api/v1/images/{world.image.pk}/").json()["lungs"]
    assert lungs["found"] is False
    assert lungs["message"].startswith("lung fields not found: is this a frontal chest X-ray?")
    assert lungs["mask_url"] is None
    assert lungs["outline_url"] is None
    assert client.get(f"/api/v1/images/{world.image.pk}/").json()["prediction"]["label"]

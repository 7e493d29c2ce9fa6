"""Lateral chest X-rays are refused at upload (the view check), through the web form and
the API, with a message that says what to upload instead; nothing is stored."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from apps.cases import services
from apps.cases.models import Case, CaseImage
from apps.cases.validation import LATERAL_VIEW, UploadRejected, validate_image, view_check
from tests.conftest import IMAGES, fixture_manifest, stored_files, upload_of

pytestmark = pytest.mark.django_db

LATERAL = "lateral/000002-11-b.jpg"
LATERALS = ["lateral/000002-11-b.jpg", "lateral/covid-19-pneumonia-30-L.jpg"]
MESSAGE = (
    "this looks like a lateral view; upload a frontal (PA/AP) chest X-ray. "
    "Upside down or inverted films are refused too: upload it the right way up, "
    "as a positive (bones white)."
)


def _upload(path: str):
    return upload_of(path.split("/")[-1], (IMAGES / path).read_bytes())


def test_the_refusal_says_what_to_upload_instead():
    assert LATERAL_VIEW == MESSAGE


@pytest.mark.parametrize("path", LATERALS)
@pytest.mark.slow
def test_lateral_view_is_refused_by_the_service_and_nothing_is_stored(path, clinician, media_root):
    with pytest.raises(UploadRejected) as caught:
        services.create_case(owner=clinician, files=[_upload(path)])
    assert caught.value.status == 400
    assert str(caught.value) == f"{path.split('/')[-1]}: {MESSAGE}"
    assert Case.objects.count() == CaseImage.objects.count() == 0
    assert stored_files(media_root) == []


@pytest.mark.slow
def test_lateral_view_is_refused_through_the_web_form(login, clinician, media_root):
    client = login(clinician)
    page = client.post(reverse("cases:create"), {"images": [_upload(LATERAL)]})
    assert page.status_code == 400
    assert MESSAGE in page.content.decode()
    answer = client.post(
        reverse("cases:create"),
        {"images": [_upload(LATERAL), upload_of("2168a917.jpg")]},
        headers={"accept": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.json()["files"] == [{"name": "000002-11-b.jpg", "problem": MESSAGE}]
    assert Case.objects.count() == 0
    assert stored_files(media_root) == []


def test_lateral_view_is_refused_through_the_api(clinician, media_root):
    api = APIClient()
    api.force_authenticate(clinician)
    response = api.post("/api/v1/cases/", {"images": [_upload(LATERAL)]}, format="multipart")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == 400
    assert MESSAGE in error["message"]
    assert "000002-11-b.jpg" in error["message"]
    assert Case.objects.count() == 0
    assert stored_files(media_root) == []


@pytest.mark.parametrize("turn", ["upside down", "inverted"])
def test_an_upside_down_or_inverted_frontal_film_is_refused_saying_so(turn, clinician, media_root):
    import io

    from PIL import Image, ImageOps

    with Image.open(IMAGES / "00001280_004.jpg") as film:
        gray = film.convert("L")
        turned = ImageOps.flip(gray) if turn == "upside down" else ImageOps.invert(gray)
    buffer = io.BytesIO()
    turned.save(buffer, format="PNG")
    with pytest.raises(UploadRejected) as caught:
        services.create_case(owner=clinician, files=[upload_of("film.png", buffer.getvalue())])
    assert "Upside down or inverted films are refused too" in str(caught.value)
    assert Case.objects.count() == 0


@pytest.mark.slow
def test_every_frontal_fixture_passes_the_view_check_at_upload():
    check = view_check()
    assert check is not None
    for row in fixture_manifest():
        validated = validate_image(upload_of(row["path"]))
        assert validated.width > 0, row["path"]


def test_with_the_view_check_off_the_lateral_view_passes_the_other_checks(settings):
    """The refusal comes from the view check: the OOD gate alone accepts this lateral
    film (it is a chest radiograph), which is why the view check exists."""
    settings.CXR_VIEW_CHECK = None
    validated = validate_image(_upload(LATERAL))
    assert (validated.width, validated.height) == (307, 382)

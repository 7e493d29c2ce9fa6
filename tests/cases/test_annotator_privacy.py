"""Annotators judge images, not patients: the image JSON they get has an opaque
per-image reference for its id, and no case id (which would group a patient's images),
and the disputes list does not name the other annotators."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from apps.cases import labelling
from apps.cases.models import CaseImage
from tests.factories import CaseFactory, CaseImageFactory, PredictionFactory, UserFactory


@pytest.fixture
def two_images_of_one_case(clinician) -> list[CaseImage]:
    case = CaseFactory(owner=clinician)
    images = [
        CaseImageFactory(case=case),
        CaseImageFactory(case=case, fixture="IM-0117-0001.jpeg"),
    ]
    for image in images:
        PredictionFactory(image=image)
    return images


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_annotators_get_an_opaque_image_ref_and_no_case_id(annotator, two_images_of_one_case):
    client = _api(annotator)
    case_id = two_images_of_one_case[0].case_id
    pks = {str(image.pk) for image in two_images_of_one_case}
    queue = client.get("/api/v1/labelling/queue/").json()["results"]
    detail = client.get(f"/api/v1/labelling/images/{queue[0]['id']}/").json()
    for row in [*queue, detail]:
        assert "case" not in row
        assert isinstance(row["id"], str)
        assert len(row["id"]) >= 16
        assert row["id"] not in {str(case_id), *pks}
    refs = [row["id"] for row in queue]
    assert len(set(refs)) == 2  # per image: two images of one case differ
    assert refs == [row["id"] for row in client.get("/api/v1/labelling/queue/").json()["results"]]
    assert detail["id"] == refs[0]  # and stable


def test_the_owner_still_sees_their_case_id(clinician, two_images_of_one_case):
    client = _api(clinician)
    case_id = two_images_of_one_case[0].case_id
    rows = client.get("/api/v1/images/").json()["results"]
    assert {row["case"] for row in rows} == {case_id}
    assert all(row["ref"] for row in rows)
    case = client.get(f"/api/v1/cases/{case_id}/").json()
    assert {image["case"] for image in case["images"]} == {case_id}


def test_disputes_list_does_not_name_other_annotators(login, annotator, two_images_of_one_case):
    image = two_images_of_one_case[0]
    other = UserFactory(username="annotator-b-secret-name", roles=["annotator"])
    labelling.submit_label(image=image, annotator=annotator, label="normal")
    labelling.submit_label(image=image, annotator=other, label="pneumonia")
    page = login(annotator).get(reverse("cases:label-queue")).content.decode()
    assert "Disputed images" in page
    assert "annotator-b-secret-name" not in page
    disputes = page[page.index("Disputed images") :]
    assert "Normal" in disputes  # the verdicts are shown
    assert "Other pneumonia" in disputes
    assert "your verdict" in disputes.lower()
    # The other annotator sees the same list without the first annotator's name.
    other_page = login(other).get(reverse("cases:label-queue")).content.decode()
    assert annotator.username not in other_page[other_page.index("Disputed images") :]

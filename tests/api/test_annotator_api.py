"""What the API gives annotators: images, not patients, and not the model's answer.

An annotator's image carries an opaque id (the keyed per-image reference), no case id,
no timestamps, no intake note and no patient reference, so nothing groups one patient's
images; and, as on the web's labelling pages, the model's label, probabilities and
explanations only with ``CXR_LABEL_SHOW_MODEL`` and only after the annotator's own
verdict (their unanchored read is recorded first). Clinicians' images are as before.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from apps.cases.access import image_ref
from apps.cases.models import CaseImage, ExpertLabel
from tests.api.conftest import predicted_case
from tests.factories import UserFactory

MODEL_OUTPUT = ("probabilities", "target_label", "model_version", "covid19", "overlay")
HIDDEN_FIELDS = {"case", "ref", "created_at", "updated_at", "intake_note", "patient_ref"}


def _keys(value: Any) -> set[str]:
    """Every key of a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def _queue(client) -> list[dict]:
    response = client.get("/api/v1/labelling/queue/")
    assert response.status_code == 200, response.content
    return response.json()["results"]


def _queued(client, image: CaseImage) -> dict:
    """The queue's row of ``image``: its id is the image's opaque reference."""
    rows = [row for row in _queue(client) if row["id"] == image_ref(image)]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def two_image_case(world, clinician) -> list[CaseImage]:
    case = predicted_case(clinician, "2168a917.jpg", "IM-0117-0001.jpeg", patient_ref="P-TWO")
    return list(case.images.order_by("pk"))


@pytest.mark.slow
def test_annotator_gets_no_model_output_when_the_policy_is_off(world, api_as, settings):
    settings.CXR_LABEL_SHOW_MODEL = False
    client = api_as("annotator")
    rows = _queue(client)
    assert len(rows) == 2  # the two clinicians' predicted images
    for word in MODEL_OUTPUT:
        assert word not in json.dumps(rows), (word, rows)
    row = _queued(client, world.image)
    detail = client.get(f"/api/v1/labelling/images/{row['id']}/").json()
    assert detail["id"] == row["id"]
    assert not any(word in json.dumps(detail) for word in MODEL_OUTPUT), detail
    # Nor after the annotator's verdict: the policy is off.
    answered = client.post(
        f"/api/v1/labelling/images/{row['id']}/labels/", {"label": "normal"}, format="json"
    )
    assert answered.status_code == 201, answered.content
    assert answered.json()["your_verdict"]["label"] == "normal"
    assert answered.json()["prediction"] is None
    assert answered.json()["explanations"] == []
    assert ExpertLabel.objects.filter(image=world.image, label="normal").count() == 1
    detail = client.get(f"/api/v1/labelling/images/{row['id']}/").json()
    assert not any(word in json.dumps(detail) for word in MODEL_OUTPUT), detail
    overlay = client.get(f"/api/v1/labelling/images/{row['id']}/explanations/gradcam/overlay/")
    assert overlay.status_code == 404


@pytest.mark.slow
def test_annotator_ids_are_opaque_and_do_not_reveal_the_case(
    world, two_image_case, api_as, settings
):
    settings.CXR_LABEL_SHOW_MODEL = True
    client = api_as("annotator")
    rows = _queue(client)
    assert len(rows) == 4
    pks = {str(image.pk) for image in CaseImage.objects.all()}
    case_ids = {str(image.case_id) for image in CaseImage.objects.all()}
    for row in rows:
        assert isinstance(row["id"], str)
        assert re.fullmatch(r"[0-9a-f]{24}", row["id"]), row["id"]
        assert row["id"] not in pks | case_ids
        assert not _keys(row) & HIDDEN_FIELDS, row
        assert not any(key.endswith("_at") for key in _keys(row)), row
        assert "P-TWO" not in json.dumps(row)
        assert "PSEUDO-API" not in json.dumps(row)
    # Two images of one case share nothing that says so, and each id is stable.
    first, second = (_queued(client, image) for image in two_image_case)
    assert first["id"] != second["id"]
    assert first["file_url"] != second["file_url"]
    assert {row["id"] for row in _queue(client)} == {row["id"] for row in rows}
    # The routes take the opaque id, never the image's number.
    assert client.get(f"/api/v1/labelling/images/{first['id']}/").json()["id"] == first["id"]
    assert client.get(f"/api/v1/labelling/images/{two_image_case[0].pk}/").status_code == 404
    assert client.get(f"/api/v1/images/{two_image_case[0].pk}/").status_code == 403
    assert client.get("/api/v1/images/").status_code == 403
    image = client.get(first["file_url"])
    assert image.status_code == 200
    assert b"".join(image.streaming_content)[:4] in {b"\x89PNG", b"\xff\xd8\xff\xe0"}


@pytest.mark.slow
def test_with_the_policy_on_the_model_output_appears_after_the_verdict(world, api_as, settings):
    settings.CXR_LABEL_SHOW_MODEL = True
    client = api_as("annotator")
    row = _queued(client, world.image)
    # Before the annotator's verdict: as off (the queue holds only images not yet read).
    assert row["prediction"] is None
    assert row["explanations"] == []
    url = f"/api/v1/labelling/images/{row['id']}/"
    assert client.get(url).json()["prediction"] is None
    answered = client.post(f"{url}labels/", {"label": "pneumonia", "note": "left base"})
    assert answered.status_code == 201, answered.content
    body = answered.json()
    prediction = world.image.latest_prediction
    assert prediction is not None
    assert body["your_verdict"] == {"label": "pneumonia", "note": "left base"}
    assert body["prediction"]["label"] == prediction.label
    assert body["prediction"]["probabilities"] == pytest.approx(prediction.probabilities)
    assert body["prediction"]["model_version"]["name"] == prediction.model_version.name
    [gradcam] = body["explanations"]
    assert gradcam["method"] == "gradcam"
    assert gradcam["target_label"] == world.explanation.target_label
    overlay = client.get(gradcam["overlay_url"])
    assert overlay.status_code == 200
    assert b"".join(overlay.streaming_content)[:4] == b"\x89PNG"
    assert client.get(url).json() == body  # the same on reading it again
    # Changing the verdict answers 200; the image has left this annotator's queue.
    changed = client.post(f"{url}labels/", {"label": "normal"}, format="json")
    assert changed.status_code == 200
    assert changed.json()["your_verdict"]["label"] == "normal"
    assert row["id"] not in {r["id"] for r in _queue(client)}
    mine = client.get("/api/v1/labelling/mine/").json()["results"]
    assert [r["id"] for r in mine] == [row["id"]]
    assert mine[0]["prediction"]["label"] == prediction.label


@pytest.mark.slow
def test_another_annotator_still_sees_no_model_output_before_their_verdict(
    world, api_as, annotator, settings
):
    settings.CXR_LABEL_SHOW_MODEL = True
    first = api_as("annotator")
    row = _queued(first, world.image)
    first.post(f"/api/v1/labelling/images/{row['id']}/labels/", {"label": "normal"})
    second = api_as(UserFactory(username="annotator-b", roles=["annotator"]))
    detail = second.get(f"/api/v1/labelling/images/{row['id']}/").json()
    assert detail["id"] == row["id"]
    assert detail["your_verdict"] is None
    assert detail["prediction"] is None
    assert detail["explanations"] == []
    overlay = second.get(f"/api/v1/labelling/images/{row['id']}/explanations/gradcam/overlay/")
    assert overlay.status_code == 404


@pytest.mark.slow
def test_an_image_held_for_review_is_not_found_by_its_reference(world, api_as):
    client = api_as("annotator")
    row = _queued(client, world.image)
    CaseImage.objects.filter(pk=world.image.pk).update(status=CaseImage.Status.HELD)
    assert client.get(f"/api/v1/labelling/images/{row['id']}/").status_code == 404
    assert client.get(f"/api/v1/labelling/images/{'0' * 24}/").status_code == 404


@pytest.mark.slow
def test_clinicians_images_are_unchanged(world, api_as, settings):
    settings.CXR_LABEL_SHOW_MODEL = False
    client = api_as("clinician")
    [listed] = client.get("/api/v1/images/").json()["results"]
    detail = client.get(f"/api/v1/images/{world.image.pk}/").json()
    for image in (listed, detail):
        assert image["id"] == world.image.pk
        assert image["case"] == world.case.pk
        assert image["prediction"]["label"] in {"covid19", "pneumonia", "normal"}
        assert image["explanations"][0]["target_label"] == world.explanation.target_label
        assert "created_at" in image
    assert client.get("/api/v1/labelling/queue/").status_code == 403


@pytest.mark.slow
def test_a_clinician_who_also_annotates_gets_only_their_own_images_by_number(
    world, api_as, settings
):
    settings.CXR_LABEL_SHOW_MODEL = False
    both = UserFactory(username="dr-reader", roles=["clinician", "annotator"])
    client = api_as(both)
    assert client.get("/api/v1/images/").json()["results"] == []
    assert client.get(f"/api/v1/images/{world.image.pk}/").status_code == 404
    assert client.get(f"/api/v1/explanations/{world.explanation.pk}/").status_code == 404
    assert len(_queue(client)) == 2  # as an annotator: the opaque, blind rows

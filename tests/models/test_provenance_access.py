"""Model admins read the provenance of training data only, as the model inspector limits
them: an image in a dataset snapshot whose case is not deleted. Every read is audited,
and readers' note texts are not shown (whether a verdict has a note is)."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from apps.accounts.models import AuditEvent
from apps.cases import labelling, retention
from apps.models.models import DatasetSnapshot, SnapshotItem
from tests.factories import PredictionFactory, UserFactory

pytestmark = pytest.mark.django_db

NOTE = "patient Jane Roe, known TB contact"


def _image(note: str = ""):
    image = PredictionFactory().image
    reader = UserFactory(username=f"reader-{image.pk}", roles=["annotator"])
    labelling.submit_label(image=image, annotator=reader, label="normal", note=note)
    return image


def _in_snapshot(image):
    SnapshotItem.objects.create(
        snapshot=DatasetSnapshot.objects.create(content_hash=f"with-{image.pk}"),
        case_image=image,
        label="normal",
        split="train",
        patient="p",
        source="clinical",
        pixel_sha256=image.sha256,
    )
    return image


def _api(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_the_provenance_of_an_image_outside_every_snapshot_is_a_404(model_admin, login):
    image = _image(NOTE)
    client = login(model_admin)
    assert client.get(reverse("registry:image-provenance", args=[image.pk])).status_code == 404
    assert _api(model_admin).get(f"/api/v1/images/{image.pk}/provenance/").status_code == 404
    # The snapshots page's image box does not lead there either.
    response = client.get(reverse("registry:snapshots"), {"image": str(image.pk)})
    assert response.status_code == 200
    assert not AuditEvent.objects.filter(action="provenance.viewed").exists()


def test_the_provenance_of_a_deleted_cases_image_is_a_404(model_admin, login):
    image = _in_snapshot(_image())
    retention.delete_case(actor=image.case.owner, case=image.case)
    client = login(model_admin)
    assert client.get(reverse("registry:image-provenance", args=[image.pk])).status_code == 404
    assert _api(model_admin).get(f"/api/v1/images/{image.pk}/provenance/").status_code == 404


def test_training_data_provenance_is_audited_and_shows_no_note_text(model_admin, login):
    image = _in_snapshot(_image(NOTE))
    page = login(model_admin).get(reverse("registry:image-provenance", args=[image.pk]))
    assert page.status_code == 200
    assert NOTE not in page.content.decode()
    response = _api(model_admin).get(f"/api/v1/images/{image.pk}/provenance/")
    assert response.status_code == 200
    body = response.json()
    assert NOTE not in response.content.decode()
    assert [v["has_note"] for v in body["label"]["verdicts"]] == [True]
    assert all("note" not in event for event in body["label_history"])
    web, api = AuditEvent.objects.filter(action="provenance.viewed").order_by("pk")
    for event, via in ((web, "web"), (api, "api")):
        assert event.actor == model_admin
        assert (event.target_type, event.target_id) == ("cases.CaseImage", str(image.pk))
        assert event.after["via"] == via

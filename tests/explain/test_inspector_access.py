"""The model inspector shows model admins clinicians' images only when those images are
training data (in a dataset snapshot): a model admin has no case permission, so a
freshly uploaded case is not theirs to look at. Every look at a case image is audited."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.explain.models import Inspection, InspectionPicture
from apps.models.models import DatasetSnapshot, SnapshotItem, Split
from tests.factories import PredictionFactory, _overlay_png


def _in_snapshot(image) -> None:
    snapshot = DatasetSnapshot.objects.create(content_hash="0" * 64)
    SnapshotItem.objects.create(
        snapshot=snapshot,
        case_image=image,
        label="normal",
        split=Split.TRAIN,
        patient="pseudo",
        source="clinical",
    )


@pytest.fixture
def fresh_image(db):
    """A clinician's image with a finished prediction, in no snapshot."""
    return PredictionFactory().image


@pytest.fixture
def training_image(db):
    image = PredictionFactory(image__fixture="IM-0117-0001.jpeg").image
    image.confirmed_label = "normal"
    image.save(update_fields=["confirmed_label"])
    _in_snapshot(image)
    return image


def _inspection_of(image, version, user) -> tuple[Inspection, InspectionPicture]:
    inspection = Inspection.objects.create(
        model_version=version, case_image=image, requested_by=user, status="done"
    )
    picture = InspectionPicture(inspection=inspection, kind="input", title="Input")
    picture.file.save("input.png", ContentFile(_overlay_png()), save=False)
    picture.save()
    return inspection, picture


def test_form_offers_only_case_images_in_a_snapshot(
    login, model_admin, production_model, fresh_image, training_image
):
    page = login(model_admin).get(reverse("registry:inspector")).content.decode()
    assert f'value="case-{training_image.pk}"' in page
    assert f'value="case-{fresh_image.pk}"' not in page


def test_a_case_image_outside_a_snapshot_cannot_be_inspected(
    login, model_admin, production_model, fresh_image
):
    response = login(model_admin).post(
        reverse("registry:inspector"),
        {"version": production_model.pk, "image": f"case-{fresh_image.pk}"},
    )
    assert response.status_code == 400
    assert "Choose an image." in response.content.decode()
    assert not Inspection.objects.exists()


def test_inspecting_a_training_image_is_audited_with_the_image(
    login, model_admin, production_model, training_image, django_capture_on_commit_callbacks
):
    client = login(model_admin)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            reverse("registry:inspector"),
            {"version": production_model.pk, "image": f"case-{training_image.pk}"},
        )
    assert response.status_code == 302
    inspection = Inspection.objects.get()
    event = AuditEvent.objects.get(action="inspection.requested")
    assert event.actor == model_admin
    assert event.after["image"] == f"case-{training_image.pk}"

    _, picture = _inspection_of(training_image, production_model, model_admin)
    assert client.get(reverse("registry:inspection", args=[inspection.pk])).status_code == 200
    served = client.get(reverse("registry:inspection-picture", args=[picture.pk]))
    assert served.status_code == 200
    viewed = AuditEvent.objects.get(action="inspector.image_viewed")
    assert viewed.actor == model_admin
    assert viewed.target_type == "cases.CaseImage"
    assert viewed.target_id == str(training_image.pk)
    assert viewed.after == {"inspection": picture.inspection_id, "picture": "input"}


def test_earlier_inspections_of_images_outside_a_snapshot_are_not_shown(
    login, model_admin, production_model, fresh_image
):
    inspection, picture = _inspection_of(fresh_image, production_model, model_admin)
    client = login(model_admin)
    assert client.get(reverse("registry:inspection", args=[inspection.pk])).status_code == 404
    assert client.get(reverse("registry:inspection-picture", args=[picture.pk])).status_code == 404
    page = client.get(reverse("registry:inspector")).content.decode()
    assert reverse("registry:inspection", args=[inspection.pk]) not in page
    assert not AuditEvent.objects.filter(action="inspector.image_viewed").exists()

"""POST /api/v1/models/{id}/operating-point/: the web form's service over the API."""

from __future__ import annotations

import pytest

from apps.accounts.models import AuditEvent
from apps.models.models import ModelVersion
from tests.factories import CLASSES, ModelVersionFactory, operating_point


@pytest.fixture
def curved(db) -> ModelVersion:
    return ModelVersionFactory(
        card={
            "classes": list(CLASSES),
            "preprocessing": {"input_size": 64},
            "operating_point": operating_point((-1.0, 0.0, 1.0), card_normal=0.0),
        }
    )


def _url(version: ModelVersion) -> str:
    return f"/api/v1/models/{version.pk}/operating-point/"


def test_model_admin_moves_a_version_to_another_row_and_back(api_as, model_admin, curved):
    client = api_as("model_admin")
    offsets = {"covid19": 0.0, "pneumonia": 0.0, "normal": -1.0}
    response = client.post(_url(curved), {"offsets": offsets, "reason": "pilot"}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["operating_point"]["offsets"] == offsets
    assert body["active_offsets"] == offsets
    event = AuditEvent.objects.get(action="model.operating_point", actor=model_admin)
    assert event.after["reason"] == "pilot"
    assert event.after["operating_point"] == {"source": "chosen", "offsets": offsets}

    detail = client.get(f"/api/v1/models/{curved.pk}/").json()
    assert detail["active_offsets"] == offsets

    reset = client.post(_url(curved), {"reset": True}, format="json")
    assert reset.status_code == 200
    assert reset.json()["operating_point"] is None
    assert reset.json()["active_offsets"] == {"covid19": 0.0, "pneumonia": 0.0, "normal": 0.0}
    assert AuditEvent.objects.filter(action="model.operating_point").count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"offsets": {"covid19": 0.0, "pneumonia": 0.0, "normal": 0.5}}, "offsets"),
        ({"offsets": {"normal": 1.0}}, "offsets"),
        ({"offsets": {"covid19": 0.0, "pneumonia": 0.0, "normal": "a lot"}}, "offsets.normal"),
        ({}, "non_field_errors"),
        ({"offsets": {"covid19": 0.0, "pneumonia": 0.0, "normal": 1.0}, "reset": True}, None),
    ],
)
def test_offsets_that_are_not_a_row_are_a_400_and_nothing_changes(api_as, curved, body, field):
    response = api_as("model_admin").post(_url(curved), body, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    if field is not None:
        assert field in error["fields"]
    curved.refresh_from_db()
    assert curved.operating_point is None
    assert not AuditEvent.objects.filter(action="model.operating_point").exists()


def test_a_version_without_a_curve_is_a_409(api_as, db):
    version = ModelVersionFactory()
    offsets = {"covid19": 0.0, "pneumonia": 0.0, "normal": 1.0}
    client = api_as("model_admin")
    response = client.post(_url(version), {"offsets": offsets}, format="json")
    assert response.status_code == 409
    assert "no operating curve" in response.json()["error"]["message"]
    assert client.post(_url(version), {"reset": True}, format="json").status_code == 409

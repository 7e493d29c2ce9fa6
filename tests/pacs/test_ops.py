"""Operations of the PACS connection: /readyz asks the DICOM listener for a C-ECHO where
one is configured, and /metrics counts received, refused, returned and failed."""

from __future__ import annotations

import json

import pytest

from apps.pacs.models import Refusal, ReturnedObject
from apps.pacs.scp import Listener
from cxrplatform.health import CHECKS, forget_passed_checks
from tests.factories import PredictionFactory
from tests.ops.test_metrics import scrape, value
from tests.pacs.orthanc import free_port


@pytest.mark.django_db
@pytest.mark.slow
def test_readyz_checks_the_dicom_listener_where_one_is_configured(
    client, settings, production_model
):
    forget_passed_checks()
    port = free_port()
    settings.CXR_DICOM_LISTENER_CHECK = f"127.0.0.1:{port}"
    response = client.get("/readyz")
    body = json.loads(response.content)
    assert response.status_code == 503
    assert body["failed"] == ["dicom"]
    assert "did not answer a C-ECHO" in body["checks"]["dicom"]["error"]

    settings.CXR_DICOM_ALLOWED = ["ORTHANC@10.9.9.9"]  # the listener's own title still echoes
    listener = Listener(ae_title=settings.CXR_DICOM_AE_TITLE, host="127.0.0.1", port=port)
    listener.start()
    try:
        response = client.get("/readyz")
    finally:
        listener.stop()
    body = json.loads(response.content)
    assert response.status_code == 200, body
    assert body["checks"]["dicom"]["ok"] is True
    assert set(body["checks"]) == {*CHECKS, "dicom"}


@pytest.mark.django_db
def test_readyz_leaves_out_the_listener_where_none_is_configured(client, production_model):
    forget_passed_checks()
    body = json.loads(client.get("/readyz").content)
    assert "dicom" not in body["checks"]


@pytest.mark.django_db
@pytest.mark.slow
def test_metrics_count_refused_returned_and_failed(client):
    Refusal.objects.create(calling_ae="ORTHANC", address="127.0.0.1", reason="lateral view")
    prediction = PredictionFactory()
    for kind, state, uid in (("sr", "sent", "1.2.3.1"), ("sc", "failed", "1.2.3.2")):
        ReturnedObject.objects.create(
            image=prediction.image, prediction=prediction, kind=kind, state=state,
            sop_instance_uid=uid, series_instance_uid=uid + ".9",
        )  # fmt: skip
    samples = scrape(client)
    assert value(samples, "cxr_pacs_instances", outcome="refused") == 1
    assert value(samples, "cxr_pacs_instances", outcome="returned") == 1
    assert value(samples, "cxr_pacs_instances", outcome="failed") == 1
    assert value(samples, "cxr_pacs_instances", outcome="received") == 0
    assert value(samples, "cxr_metrics_errors", part="pacs") == 0

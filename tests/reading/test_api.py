"""The reading room's API: the worklist (radiologists of the site), a case's reports
(its clinician, its site's radiologists) and signing (radiologists only)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.reading.models import Report

pytestmark = pytest.mark.django_db


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_worklist_api_orders_by_priority_and_keeps_to_the_site(
    radiologist, other_radiologist, owner, study
):
    low = study(owner, (0.05, 0.05, 0.9))
    high = study(owner, (0.6, 0.3, 0.1))
    rows = _api(radiologist).get("/api/v1/reading/worklist/").json()
    assert [row["case"] for row in rows] == [high.pk, low.pk]
    assert rows[0]["high_priority"] is True
    assert rows[0]["patient_ref"] == high.patient_ref
    assert _api(other_radiologist).get("/api/v1/reading/worklist/").json() == []
    assert _api(owner).get("/api/v1/reading/worklist/").status_code == 403


def test_sign_over_the_api_and_the_clinician_reads_it(
    radiologist, other_radiologist, owner, other_owner, study
):
    case = study(owner)
    url = f"/api/v1/reading/cases/{case.pk}/reports/"
    signed = _api(radiologist).post(url, {"impression": "normal", "text": "Clear."}, format="json")
    assert signed.status_code == 201, signed.json()
    assert signed.json()["version"] == 1
    assert signed.json()["verdicts_entered"] == 1
    # An amendment without a reason is a 409; with one it is version 2.
    refused = _api(radiologist).post(url, {"impression": "covid19"}, format="json")
    assert refused.status_code == 409
    amended = _api(radiologist).post(
        url, {"impression": "covid19", "amendment_reason": "Re-read."}, format="json"
    )
    assert amended.json()["version"] == 2
    body = _api(owner).get(url).json()
    assert body["current"]["impression"] == "covid19"
    assert [r["version"] for r in body["history"]] == [2, 1]
    assert _api(other_owner).get(url).status_code == 404
    assert _api(other_radiologist).get(url).status_code == 404
    assert (
        _api(other_radiologist).post(url, {"impression": "normal"}, format="json").status_code
        == 404
    )
    assert _api(owner).post(url, {"impression": "normal"}, format="json").status_code == 403
    assert Report.objects.filter(case=case).count() == 2


def test_an_unknown_impression_is_a_400(radiologist, owner, study):
    case = study(owner)
    response = _api(radiologist).post(
        f"/api/v1/reading/cases/{case.pk}/reports/", {"impression": "maybe"}, format="json"
    )
    assert response.status_code == 400

"""DELETE /api/v1/cases/{id}/: the API twin of the case page's delete (soft delete by the
owner, audited, purged after the retention period)."""

from __future__ import annotations

import pytest

from apps.accounts.models import AuditEvent
from apps.cases import services
from apps.cases.models import Case, CaseImage
from tests.conftest import upload_of

pytestmark = pytest.mark.django_db


def test_the_owner_deletes_a_case_through_the_api(api_as, clinician, other_clinician):
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    url = f"/api/v1/cases/{case.pk}/"
    assert api_as(other_clinician).delete(url).status_code == 404
    assert Case.objects.filter(pk=case.pk).exists()

    client = api_as(clinician)
    response = client.delete(url)
    assert response.status_code == 204
    assert response.content == b""
    assert client.get(url).status_code == 404
    assert case.pk not in {c["id"] for c in client.get("/api/v1/cases/").json()["results"]}
    assert client.delete(url).status_code == 404  # hidden at once, not deleted twice
    row = Case.all_objects.get(pk=case.pk)  # kept until the purge
    assert row.deleted_at is not None
    assert CaseImage.all_objects.filter(case=row).count() == 1
    event = AuditEvent.objects.get(action="case.delete")
    assert (event.actor, event.after["images"]) == (clinician, 1)
    assert event.after["purge_after"] > row.deleted_at.isoformat()

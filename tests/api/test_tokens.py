"""API tokens (django-rest-knox): stored hashed, expiring, several per user, listed and
revoked by their owner, all revoked when the password changes; issue and revocation
are audited."""

from __future__ import annotations

from datetime import timedelta

from django.apps import apps
from django.db import models
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from apps.accounts.models import AuditEvent
from tests.factories import PASSWORD

TOKEN_URL = "/api/v1/auth/token/"
TOKENS_URL = "/api/v1/auth/tokens/"


def _obtain(username: str = "dr-a", password: str = PASSWORD) -> dict:
    response = APIClient().post(
        TOKEN_URL, {"username": username, "password": password}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def _client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def test_token_is_not_stored_in_the_database(clinician):
    token = _obtain()["token"]
    assert len(token) >= 40
    for model in apps.get_models():
        for field in model._meta.get_fields():
            if isinstance(field, models.CharField | models.TextField) and field.concrete:
                lookup = {f"{field.name}__contains": token[15:]}  # past any stored prefix
                assert not model._default_manager.filter(**lookup).exists(), (
                    f"{model._meta.label}.{field.name} holds the token"
                )
    assert _client(token).get("/api/v1/cases/").status_code == 200


def test_token_expires(settings, clinician):
    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_TTL": timedelta(hours=2)}
    body = _obtain()
    expiry = parse_datetime(body["expiry"])
    assert expiry is not None
    expected = timezone.now() + timedelta(hours=2)
    assert abs((expiry - expected).total_seconds()) < 60
    client = _client(body["token"])
    assert client.get("/api/v1/cases/").status_code == 200

    from knox.models import AuthToken

    AuthToken.objects.filter(user=clinician).update(expiry=timezone.now() - timedelta(seconds=1))
    refused = client.get("/api/v1/cases/")
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "Invalid token."


def test_owner_lists_and_revokes_their_tokens_and_nobody_elses(clinician, other_clinician):
    first, second = _obtain()["token"], _obtain()["token"]
    theirs = _obtain("dr-b")["token"]
    client = _client(first)

    listed = client.get(TOKENS_URL)
    assert listed.status_code == 200
    rows = listed.json()["results"]
    assert len(rows) == 2  # only the caller's own
    assert {row["current"] for row in rows} == {True, False}
    assert all(set(row) == {"id", "created", "expiry", "current"} for row in rows)
    assert not any(first in str(row) or second in str(row) for row in rows)
    other_id = next(row["id"] for row in rows if not row["current"])

    # Another user's token is a 404, as another clinician's case.
    their_id = _client(theirs).get(TOKENS_URL).json()["results"][0]["id"]
    assert client.delete(f"{TOKENS_URL}{their_id}/").status_code == 404
    assert _client(theirs).get("/api/v1/cases/").status_code == 200

    assert client.delete(f"{TOKENS_URL}{other_id}/").status_code == 204
    assert _client(second).get("/api/v1/cases/").status_code == 401
    assert client.get("/api/v1/cases/").status_code == 200  # the one in use still works
    assert client.delete(f"{TOKENS_URL}{other_id}/").status_code == 404

    # DELETE /auth/token/ revokes the token it is sent with.
    assert client.delete(TOKEN_URL).status_code == 204
    assert client.get("/api/v1/cases/").status_code == 401
    assert _client(theirs).get("/api/v1/cases/").status_code == 200

    events = AuditEvent.objects.filter(action__startswith="token.").order_by("pk")
    assert [e.action for e in events] == ["token.issued"] * 3 + ["token.revoked"] * 2
    assert all(e.target_type == "auth.User" for e in events)
    assert events[3].actor == clinician
    assert events[3].after["token"] == other_id
    assert all(first not in str(e.after) for e in events)


def test_password_change_revokes_every_token(clinician):
    tokens = [_obtain()["token"] for _ in range(2)]
    clinician.set_password("a-new-and-long-password")
    clinician.save()
    for token in tokens:
        assert _client(token).get("/api/v1/cases/").status_code == 401
    revoked = AuditEvent.objects.filter(action="token.revoked")
    assert revoked.count() == 2
    assert {e.after["reason"] for e in revoked} == {"password changed"}
    # Saving the user for another reason keeps a new token working.
    token = _obtain(password="a-new-and-long-password")["token"]
    clinician.first_name = "Ada"
    clinician.save()
    assert _client(token).get("/api/v1/cases/").status_code == 200

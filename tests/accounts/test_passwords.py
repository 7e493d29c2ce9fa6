"""Password change for every user, reset by e-mail, validators, and
demo users made to change the published demo password at first log-in outside DEBUG."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.urls import reverse
from knox.models import AuthToken
from rest_framework.test import APIClient

from apps.accounts import tokens
from apps.accounts.models import AuditEvent, PasswordChangeRequired
from apps.accounts.services import create_demo_users
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db
NEW = "a-much-better-secret-2026"


def _change(client, old, new1, new2=None):
    return client.post(
        reverse("password_change"),
        {"old_password": old, "new_password1": new1, "new_password2": new2 or new1},
    )


@pytest.mark.parametrize("role", ["clinician", "annotator", "model_admin", "adjudicator"])
def test_every_user_changes_their_password(client, role):
    user = UserFactory(roles=[role], username=f"u-{role}")
    tokens.issue_token(user=user)
    client.force_login(user)
    assert client.get(reverse("password_change")).status_code == 200
    response = _change(client, PASSWORD, NEW)
    assert response.status_code == 302
    assert response.url == reverse("password_change_done")
    user.refresh_from_db()
    assert user.check_password(NEW)
    assert not AuthToken.objects.filter(user=user).exists()  # tokens revoked
    assert AuditEvent.objects.filter(action="auth.password_changed", target_id=str(user.pk))
    assert client.get(reverse("home")).status_code in {200, 302}  # still logged in


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ("short1", "too short"),
        ("password123", "too common"),
        ("8675309245617", "entirely numeric"),
    ],
)
def test_password_validators_refuse_weak_passwords(client, clinician, new, message):
    client.force_login(clinician)
    response = _change(client, PASSWORD, new)
    assert response.status_code == 200
    assert message in response.content.decode()
    clinician.refresh_from_db()
    assert clinician.check_password(PASSWORD)


def test_a_wrong_old_password_changes_nothing(client, clinician):
    client.force_login(clinician)
    response = _change(client, "not-the-password", NEW)
    assert response.status_code == 200
    clinician.refresh_from_db()
    assert clinician.check_password(PASSWORD)


def test_password_reset_by_email_sets_a_new_password_once(client):
    user = UserFactory(username="forgetful", email="forgetful@example.org", roles=["clinician"])
    response = client.post(reverse("password_reset"), {"email": "forgetful@example.org"})
    assert response.status_code == 302
    assert response.url == reverse("password_reset_done")
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["forgetful@example.org"]
    link = re.search(r"http://testserver(/account/password/reset/\S+/)", str(message.body))
    assert link, message.body
    page = client.get(link[1], follow=True)  # Django swaps the token for a session key
    assert page.status_code == 200
    assert b"Choose a new password" in page.content
    done = client.post(page.redirect_chain[-1][0], {"new_password1": NEW, "new_password2": NEW})
    assert done.status_code == 302
    assert done.url == reverse("password_reset_complete")
    user.refresh_from_db()
    assert user.check_password(NEW)
    assert AuditEvent.objects.filter(action="auth.password_reset_requested", target_id=str(user.pk))
    assert AuditEvent.objects.filter(action="auth.password_reset", target_id=str(user.pk))
    # The link works once.
    again = client.get(link[1], follow=True)
    assert b"This link is not valid" in again.content


def test_password_reset_for_an_unknown_address_looks_the_same_and_sends_nothing(client):
    response = client.post(reverse("password_reset"), {"email": "nobody@example.org"})
    assert response.status_code == 302
    assert response.url == reverse("password_reset_done")
    assert mail.outbox == []
    assert not AuditEvent.objects.filter(action="auth.password_reset_requested")


def test_the_login_page_links_to_the_reset(client):
    assert reverse("password_reset").encode() in client.get(reverse("login")).content


def test_smtp_settings_come_from_the_environment():
    from cxrplatform.env import env_int, env_str

    environ = {"EMAIL_HOST": "smtp.hospital.example", "EMAIL_PORT": "587"}
    assert env_str("EMAIL_HOST", default="localhost", environ=environ) == "smtp.hospital.example"
    assert env_int("EMAIL_PORT", default=25, environ=environ) == 587


# --- demo users ------------------------------------------------------------------------------


def test_demo_users_must_change_the_demo_password_outside_debug(client, settings):
    settings.DEBUG = False
    rows = create_demo_users()
    username, password, _role = next(row for row in rows if row[0] == "clinician")
    user = get_user_model().objects.get(username=username)
    assert PasswordChangeRequired.objects.filter(user=user).exists()
    response = client.post(reverse("login"), {"username": username, "password": password})
    assert response.status_code == 302
    page = client.get(reverse("cases:list"))
    assert page.status_code == 302
    assert page.url == reverse("password_change")
    assert client.get(reverse("password_change")).status_code == 200
    # The API refuses a token until the password is changed.
    api = APIClient()
    token = api.post("/api/v1/auth/token/", {"username": username, "password": password})
    assert token.status_code == 403
    assert "Change your password" in token.json()["error"]["message"]
    # Changing it lifts the mark.
    assert _change(client, password, NEW).status_code == 302
    assert not PasswordChangeRequired.objects.filter(user=user).exists()
    assert client.get(reverse("cases:list")).status_code == 200
    token = api.post("/api/v1/auth/token/", {"username": username, "password": NEW})
    assert token.status_code == 200


def test_in_debug_the_demo_users_are_not_stopped(client, settings):
    settings.DEBUG = True
    rows = create_demo_users()
    username, password, _role = next(row for row in rows if row[0] == "clinician")
    client.post(reverse("login"), {"username": username, "password": password})
    assert client.get(reverse("cases:list")).status_code == 200


def test_a_session_of_a_marked_user_gets_403_from_the_api(client, settings):
    settings.DEBUG = False
    create_demo_users()
    user = get_user_model().objects.get(username="annotator")
    client.force_login(user)
    response = client.get("/api/v1/labelling/queue/")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "password_change_required"

"""The users and roles page for site administrators (superusers or the
site_admin role): invite or create, assign roles, deactivate, see last log-in; audited;
role changes take effect on the user's next request."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.urls import reverse
from knox.models import AuthToken

from apps.accounts import tokens
from apps.accounts.models import AuditEvent, PasswordChangeRequired
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db
NEW = "a-much-better-secret-2026"


@pytest.fixture
def site_admin(db):
    return UserFactory(username="siteadmin", roles=["site_admin"])


def _log_in(client, username, password) -> bool:
    """The real log-in page (django-axes needs the request)."""
    response = client.post(reverse("login"), {"username": username, "password": password})
    return response.status_code == 302


def _events(action, user):
    return AuditEvent.objects.filter(action=action, target_id=str(user.pk))


@pytest.mark.parametrize("role", ["clinician", "annotator", "model_admin", "adjudicator"])
def test_only_site_admins_and_superusers_open_the_users_page(client, role, site_admin):
    client.force_login(UserFactory(roles=[role]))
    assert client.get(reverse("user-list")).status_code == 403
    assert client.get(reverse("user-create")).status_code == 403
    assert client.get(reverse("user-detail", args=[site_admin.pk])).status_code == 403
    client.force_login(site_admin)
    assert client.get(reverse("user-list")).status_code == 200
    superuser = get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    client.force_login(superuser)
    assert client.get(reverse("user-list")).status_code == 200


def test_the_list_shows_roles_status_and_last_login(client, site_admin, clinician):
    _log_in(client, clinician.username, PASSWORD)  # sets last_login
    clinician.refresh_from_db()
    client.force_login(site_admin)
    page = client.get(reverse("user-list")).content.decode()
    match = re.search(r'<tr data-user="dr-a">(.*?)</tr>', page, re.S)
    assert match is not None
    row = match[1]
    assert "clinician" in row
    assert "active" in row
    assert clinician.last_login.strftime("%Y-%m-%d %H:%M") in row
    assert "Users" in page  # the navigation link


def test_a_site_admin_invites_a_user_who_chooses_a_password_and_logs_in(client, site_admin):
    client.force_login(site_admin)
    response = client.post(
        reverse("user-create"),
        {"username": "dr-new", "email": "dr.new@example.org", "roles": ["clinician", "annotator"]},
    )
    assert response.status_code == 302
    user = get_user_model().objects.get(username="dr-new")
    assert not user.has_usable_password()
    assert set(user.groups.values_list("name", flat=True)) == {"clinician", "annotator"}
    assert _events("user.create", user).get().after == {
        "roles": ["annotator", "clinician"],
        "invited": True,
    }
    assert _events("user.invite", user).exists()
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/account/password/reset/\S+/)", str(mail.outbox[0].body))
    assert link is not None
    client.logout()
    page = client.get(link[1], follow=True)
    done = client.post(page.redirect_chain[-1][0], {"new_password1": NEW, "new_password2": NEW})
    assert done.status_code == 302
    assert _log_in(client, "dr-new", NEW)
    assert client.get(reverse("cases:list")).status_code == 200


def test_a_user_created_with_a_password_must_change_it(client, site_admin, settings):
    settings.DEBUG = False
    client.force_login(site_admin)
    response = client.post(
        reverse("user-create"),
        {"username": "reader-9", "roles": ["annotator"], "password": "temporary-Secret-991"},
    )
    assert response.status_code == 302
    user = get_user_model().objects.get(username="reader-9")
    assert PasswordChangeRequired.objects.filter(user=user).exists()
    assert mail.outbox == []
    client.logout()
    client.post(reverse("login"), {"username": "reader-9", "password": "temporary-Secret-991"})
    assert client.get(reverse("cases:label-queue")).url == reverse("password_change")


def test_creating_refuses_weak_passwords_duplicates_and_no_way_in(client, site_admin, clinician):
    client.force_login(site_admin)
    weak = client.post(reverse("user-create"), {"username": "x1", "password": "12345678"})
    assert weak.status_code == 400
    assert b"too common" in weak.content or b"entirely numeric" in weak.content
    duplicate = client.post(reverse("user-create"), {"username": "DR-A", "email": "a@example.org"})
    assert duplicate.status_code == 400
    assert b"exists already" in duplicate.content
    neither = client.post(reverse("user-create"), {"username": "x2"})
    assert neither.status_code == 400
    assert not get_user_model().objects.filter(username__in=["x1", "x2"]).exists()


def test_a_role_change_takes_effect_on_the_users_next_request(client, site_admin, clinician):
    from django.test import Client

    theirs = Client()
    theirs.force_login(clinician)
    assert theirs.get(reverse("cases:list")).status_code == 200
    client.force_login(site_admin)
    response = client.post(
        reverse("user-detail", args=[clinician.pk]), {"action": "roles", "roles": ["annotator"]}
    )
    assert response.status_code == 302
    assert theirs.get(reverse("cases:list")).status_code == 403  # the same session
    assert theirs.get(reverse("cases:label-queue")).status_code == 200
    event = _events("user.roles", clinician).get()
    assert event.before == {"roles": ["clinician"]}
    assert event.after == {"roles": ["annotator"]}
    assert event.actor == site_admin


def test_deactivating_ends_sessions_and_tokens_and_reactivating_restores(
    client, site_admin, clinician
):
    from django.test import Client

    theirs = Client()
    theirs.force_login(clinician)
    tokens.issue_token(user=clinician)
    client.force_login(site_admin)
    client.post(reverse("user-detail", args=[clinician.pk]), {"action": "deactivate"})
    clinician.refresh_from_db()
    assert not clinician.is_active
    assert theirs.get(reverse("cases:list")).status_code == 302  # logged out
    assert not AuthToken.objects.filter(user=clinician).exists()
    assert not _log_in(theirs, clinician.username, PASSWORD)
    assert _events("user.deactivate", clinician).exists()
    client.post(reverse("user-detail", args=[clinician.pk]), {"action": "reactivate"})
    assert _log_in(theirs, clinician.username, PASSWORD)
    assert _events("user.reactivate", clinician).exists()


def test_site_admins_cannot_lock_themselves_out_or_change_superusers(client, site_admin):
    client.force_login(site_admin)
    url = reverse("user-detail", args=[site_admin.pk])
    assert client.post(url, {"action": "deactivate"}).status_code == 403
    assert client.post(url, {"action": "roles", "roles": ["clinician"]}).status_code == 403
    site_admin.refresh_from_db()
    assert site_admin.is_active
    assert site_admin.groups.filter(name="site_admin").exists()
    root = get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    response = client.post(reverse("user-detail", args=[root.pk]), {"action": "deactivate"})
    assert response.status_code == 403
    root.refresh_from_db()
    assert root.is_active
    assert not AuditEvent.objects.filter(action__startswith="user.")

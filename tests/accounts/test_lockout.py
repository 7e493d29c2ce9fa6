"""Password guessing: every page that takes a password (the web log-in, the Django admin's
log-in, the API's token endpoint) is throttled per client address, and an account is
locked after repeated failures wherever they happen (django-axes), with an audit event."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from apps.accounts.models import AuditEvent
from apps.api.throttles import reset_throttles
from tests.factories import PASSWORD, UserFactory

# A fresh client address for every attempt, so the per-address throttle never answers
# first: these tests are about the per-account lockout.
_addresses = (f"10.77.{i // 250}.{i % 250 + 1}" for i in itertools.count())

LOGIN_PAGES = ["/login/", "/admin/login/"]


def _attempt(where: str, username: str, password: str, address: str | None = None):
    address = address or next(_addresses)
    reset_throttles(address)
    if where == "token":
        return APIClient().post(
            "/api/v1/auth/token/",
            {"username": username, "password": password},
            format="json",
            REMOTE_ADDR=address,
        )
    from django.test import Client

    client = Client()
    response: Any = client.post(
        where, {"username": username, "password": password}, REMOTE_ADDR=address
    )
    response.logged_in = "_auth_user_id" in client.session
    return response


@pytest.fixture
def staff(db):
    """A superuser: the one kind of account the admin log-in admits."""
    user = UserFactory(username="root", is_staff=True, is_superuser=True)
    return user


@pytest.fixture(autouse=True)
def _limit(settings):
    settings.AXES_FAILURE_LIMIT = 5


def _succeeded(where: str, response) -> bool:
    if where == "token":
        return response.status_code == 200
    return response.status_code == 302 and response.logged_in


@pytest.mark.parametrize("where", ["/login/", "/admin/login/", "token"])
@pytest.mark.slow
def test_account_is_locked_after_repeated_failures_and_the_right_password_then_fails(where, staff):
    assert _succeeded(where, _attempt(where, "root", PASSWORD))  # works before
    for _ in range(15):  # the review's reproduction: 15 wrong passwords...
        _attempt(where, "root", "wrong-password")
    locked = _attempt(where, "root", PASSWORD)  # ... then the right one
    assert not _succeeded(where, locked)
    assert locked.status_code == 429
    assert 0 < int(locked["Retry-After"]) <= 15 * 60
    if where == "token":
        error = locked.json()["error"]
        assert error["status"] == 429
        assert error["code"] == "locked_out"
        assert "locked" in error["message"]
    else:
        assert "locked" in locked.content.decode()
    event = AuditEvent.objects.get(action="auth.locked_out")
    assert event.target_type == "auth.User"
    assert event.target_id == str(staff.pk)
    assert event.after["username"] == "root"
    assert event.after["failures"] >= 5


def test_lockout_counts_failures_across_every_log_in_page_and_spares_other_accounts(
    clinician, staff
):
    _attempt("/login/", "dr-a", "wrong-1")
    _attempt("/admin/login/", "dr-a", "wrong-2")
    _attempt("token", "dr-a", "wrong-3")
    _attempt("/login/", "dr-a", "wrong-4")
    # Four failures: not locked yet.
    assert _succeeded("token", _attempt("token", "dr-a", PASSWORD))
    # A success resets the count: four more failures still leave the account open.
    for n in range(4):
        _attempt("token", "dr-a", f"wrong-{n}")
    assert _succeeded("/login/", _attempt("/login/", "dr-a", PASSWORD))
    for n in range(5):
        _attempt("token", "dr-a", f"again-{n}")
    assert _attempt("/login/", "dr-a", PASSWORD).status_code == 429
    assert _attempt("token", "dr-a", PASSWORD).status_code == 429
    # Per account, not per address: the locked account's address still logs others in.
    assert _succeeded("/admin/login/", _attempt("/admin/login/", "root", PASSWORD))
    assert AuditEvent.objects.filter(action="auth.locked_out").count() == 1


def test_an_operator_unlocks_an_account(clinician):
    for n in range(5):
        _attempt("token", "dr-a", f"wrong-{n}")
    assert _attempt("token", "dr-a", PASSWORD).status_code == 429
    call_command("axes_reset_username", "dr-a")
    assert _succeeded("token", _attempt("token", "dr-a", PASSWORD))


def test_unknown_usernames_are_locked_the_same_way_and_audited_without_a_user(db):
    for n in range(5):
        response = _attempt("token", "nobody", f"wrong-{n}")
    assert response.status_code == 429
    event = AuditEvent.objects.get(action="auth.locked_out")
    assert event.actor is None
    assert event.target_type == "auth.User"
    assert event.target_id == ""
    assert event.after["username"] == "nobody"


def test_admin_login_is_throttled_per_address(settings, staff):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"auth": "3/minute", "login": "3/minute"},
    }
    address = "10.78.0.1"
    reset_throttles(address)
    from django.test import Client

    client = Client()
    for n in range(3):  # different usernames: the lockout is not what stops the fourth
        response = client.post(
            "/admin/login/", {"username": f"guess{n}", "password": "x"}, REMOTE_ADDR=address
        )
        assert response.status_code == 200
    blocked = client.post(
        "/admin/login/", {"username": "root", "password": PASSWORD}, REMOTE_ADDR=address
    )
    assert blocked.status_code == 429
    assert int(blocked["Retry-After"]) > 0
    assert "_auth_user_id" not in client.session
    # The web log-in shares the address's count: guessing moves from one page to the other.
    other = client.post("/login/", {"username": "root", "password": PASSWORD}, REMOTE_ADDR=address)
    assert other.status_code == 429
    assert client.get("/admin/login/", REMOTE_ADDR=address).status_code == 200

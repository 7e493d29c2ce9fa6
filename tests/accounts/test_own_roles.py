"""Nobody changes their own roles: a site admin who gave themselves model-admin or
annotator rights would reach patient data with no second person involved. Another site
admin changes them."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from apps.accounts import users
from apps.accounts.models import AuditEvent
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def site_admin(db):
    return UserFactory(username="site-a", roles=["site_admin"])


@pytest.mark.parametrize("role", ["model_admin", "annotator", "adjudicator", "clinician"])
def test_a_site_admin_cannot_give_themselves_a_role(client, site_admin, role):
    client.force_login(site_admin)
    url = reverse("user-detail", args=[site_admin.pk])
    response = client.post(url, {"action": "roles", "roles": ["site_admin", role]})
    assert response.status_code == 403
    (message,) = [str(m) for m in get_messages(response.wsgi_request)]
    assert "You cannot change your own roles" in message
    assert users.roles_of(site_admin) == ["site_admin"]
    assert not AuditEvent.objects.filter(action="user.roles").exists()
    with pytest.raises(PermissionDenied):
        users.set_roles(actor=site_admin, user=site_admin, roles=["site_admin", role])
    assert users.roles_of(site_admin) == ["site_admin"]


def test_their_own_page_shows_their_roles_without_a_form_and_another_admin_changes_them(
    client, site_admin
):
    client.force_login(site_admin)
    own = client.get(reverse("user-detail", args=[site_admin.pk])).content.decode()
    assert "data-own-roles" in own
    assert 'value="roles"' not in own
    colleague = UserFactory(username="site-b", roles=["site_admin"])
    client.force_login(colleague)
    other = client.get(reverse("user-detail", args=[site_admin.pk])).content.decode()
    assert 'value="roles"' in other
    response = client.post(
        reverse("user-detail", args=[site_admin.pk]),
        {"action": "roles", "roles": ["site_admin", "model_admin"]},
    )
    assert response.status_code == 302
    assert users.roles_of(site_admin) == ["model_admin", "site_admin"]
    event = AuditEvent.objects.get(action="user.roles")
    assert (event.actor, event.target_id) == (colleague, str(site_admin.pk))

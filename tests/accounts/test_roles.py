import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import RequestFactory
from django.urls import reverse

from apps.accounts.roles import ROLE_PERMISSIONS, ROLES, role_required
from apps.cases.models import Case
from apps.models.models import ModelVersion
from tests.conftest import upload_of


@pytest.mark.django_db
def test_migrations_create_each_role_group_with_exactly_its_permissions():
    for role in ROLES:
        group = Group.objects.get(name=role)
        granted = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
        assert granted == set(ROLE_PERMISSIONS[role])


def test_annotators_cannot_create_cases_and_clinicians_cannot_promote_models(
    client, annotator, clinician, production_model
):
    client.force_login(annotator)
    response = client.post(reverse("cases:create"), {"images": [upload_of("2168a917.jpg")]})
    assert response.status_code == 403
    assert not Case.objects.exists()

    candidate = ModelVersion.objects.create(
        name="candidate", sha256="c" * 64, card=production_model.card
    )
    client.force_login(clinician)
    response = client.post(reverse("registry:promote", args=[candidate.pk]))
    assert response.status_code == 403
    assert ModelVersion.objects.production() == production_model
    candidate.refresh_from_db()
    assert candidate.status == ModelVersion.Status.CANDIDATE


@pytest.mark.django_db
def test_seed_demo_refuses_to_run_without_debug(settings):
    from django.contrib.auth import get_user_model
    from django.core.management.base import CommandError

    settings.DEBUG = False
    with pytest.raises(CommandError, match="only with DEBUG=1"):
        call_command("seed_demo")
    assert not get_user_model().objects.filter(username="clinician").exists()


@pytest.mark.django_db
def test_seed_demo_creates_one_user_per_role_and_prints_credentials(capsys, settings):
    settings.DEBUG = True  # the embedded demo only
    call_command("seed_demo")
    call_command("seed_demo")  # idempotent
    out = capsys.readouterr().out
    for username, role in (
        ("clinician", "clinician"),
        ("annotator", "annotator"),
        ("annotator2", "annotator"),
        ("adjudicator", "adjudicator"),
        ("modeladmin", "model_admin"),
        ("siteadmin", "site_admin"),
    ):
        password = f"{username}-demo-pass"
        assert f"username={username}" in out
        assert f"password={password}" in out
        # django-axes needs the request a log-in comes with.
        request = RequestFactory().post("/login/")
        user = authenticate(request, username=username, password=password)
        assert user is not None
        assert list(user.groups.values_list("name", flat=True)) == [role]


@pytest.mark.django_db
def test_seed_demo_has_a_user_for_every_role_site_admin_included(client, settings):
    from apps.accounts.services import create_demo_users

    settings.DEBUG = True
    rows = create_demo_users()
    assert {role for _, _, role in rows} == set(ROLES)
    username, password, _ = next(row for row in rows if row[2] == "site_admin")
    assert (
        client.post(reverse("login"), {"username": username, "password": password}).status_code
        == 302
    )
    assert client.get(reverse("user-list")).status_code == 200


def test_role_required_refuses_unknown_roles():
    with pytest.raises(ValueError, match="role_required needs roles"):
        role_required("surgeon")

"""Who reaches what across sites: every new page for every role (deny by default), a
clinician of site A never sees site B's cases, a site admin manages and unlocks only their
own site's accounts (audited), each case records its uploader's site, and the migration
put existing data into the default site."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from django.core.exceptions import PermissionDenied
from django.urls import resolve, reverse

from apps.accounts.models import AuditEvent
from apps.cases import services as cases
from apps.cases.models import Case
from apps.sites import services
from apps.sites.models import Site
from apps.sites.urls import urlpatterns
from tests.conftest import upload_of
from tests.factories import PASSWORD, CaseFactory, UserFactory
from tests.sites.conftest import member

WHO = ["anonymous", "clinician", "annotator", "model_admin", "site_admin", "other_site_admin"]


def _codes(*codes: int) -> dict[str, int]:
    return dict(zip(WHO, codes, strict=True))


# (name, method, args(world), data, expected code per WHO). The world: site A with a locked
# account of A's, a model version; "site_admin" is A's, "other_site_admin" B's. A POST
# that passes the role check is refused or redirected by what it asks.
PAGES = [
    ("sites:index", "get", lambda w: [], None, _codes(302, 403, 403, 200, 200, 200)),
    # A superuser's actions: everyone else who may open the page is refused.
    ("sites:index", "post", lambda w: [], {"action": "create", "name": "X"},
     _codes(302, 403, 403, 403, 403, 403)),
    ("sites:users", "get", lambda w: [w.site_a.pk], None, _codes(302, 403, 403, 403, 200, 404)),
    ("sites:unlock", "post", lambda w: [w.site_a.pk, w.locked.pk], {},
     _codes(302, 403, 403, 403, 302, 404)),
    ("sites:validation", "get", lambda w: [w.site_a.pk, w.version.pk], None,
     _codes(302, 403, 403, 409, 403, 403)),
    ("sites:validation-csv", "get", lambda w: [w.site_a.pk, w.version.pk], None,
     _codes(302, 403, 403, 409, 403, 403)),
    ("sites:reliability", "get", lambda w: [w.site_a.pk, w.version.pk], None,
     _codes(302, 403, 403, 404, 403, 403)),
    ("sites:operating-point", "get", lambda w: [w.site_a.pk, w.version.pk], None,
     _codes(302, 403, 403, 200, 403, 403)),
    ("sites:operating-point", "post", lambda w: [w.site_a.pk, w.version.pk],
     {"action": "rollback"}, _codes(302, 403, 403, 409, 403, 403)),
    # Drift: the world has no production classifier, so the page says so and has no plot.
    ("sites:drift", "get", lambda w: [w.site_a.pk], None, _codes(302, 403, 403, 200, 403, 403)),
    ("sites:drift-plot", "get", lambda w: [w.site_a.pk, "ood_score"], None,
     _codes(302, 403, 403, 404, 403, 403)),
]  # fmt: skip


def _lock(username: str) -> None:
    """As many failed log-ins as the limit (django-axes' own rows)."""
    from axes.models import AccessAttempt
    from django.conf import settings
    from django.utils import timezone

    AccessAttempt.objects.create(
        username=username,
        ip_address="10.9.9.9",
        user_agent="test",
        attempt_time=timezone.now(),
        failures_since_start=settings.AXES_FAILURE_LIMIT,
        get_data="",
        post_data="",
        http_accept="",
        path_info="/login/",
    )


@pytest.fixture
def world(site_a, site_b, site_admin_a, site_admin_b, version, annotator, model_admin):
    locked = member(site_a, username="locked-at-a", roles=["clinician"])
    _lock(locked.username)
    return SimpleNamespace(
        site_a=site_a,
        site_b=site_b,
        version=version,
        locked=locked,
        users={
            "anonymous": None,
            "clinician": member(site_a, username="clin-at-a", roles=["clinician"]),
            "annotator": annotator,
            "model_admin": model_admin,
            "site_admin": site_admin_a,
            "other_site_admin": site_admin_b,
        },
    )


@pytest.mark.parametrize(
    ("name", "method", "args", "data", "who", "expected"),
    [
        pytest.param(name, method, args, data, who, codes[who], id=f"{name}-{method}-{who}")
        for name, method, args, data, codes in PAGES
        for who in WHO
    ],
)
def test_page_matrix(client, world, name, method, args, data, who, expected):
    user = world.users[who]
    if user is not None:
        client.force_login(user)
    url = reverse(name, args=args(world))
    response = client.post(url, data) if method == "post" else client.get(url)
    assert response.status_code == expected, response.content[:300]
    if expected == 302 and who == "anonymous":
        assert response.url.startswith(reverse("login"))


def test_the_matrix_covers_every_sites_page_and_method():
    fake = SimpleNamespace(site_a=SimpleNamespace(pk=1), locked=SimpleNamespace(pk=2),
                           version=SimpleNamespace(pk=3))  # fmt: skip
    covered = {(resolve(reverse(n, args=a(fake))).url_name, m) for n, m, a, *_ in PAGES}
    declared = set()
    for pattern in urlpatterns:
        view = pattern.callback
        methods = {"get", "post"}
        # require_GET / require_POST / require_http_methods keep the allowed list on the
        # closure; ask the view itself for the methods it answers.
        from django.test import RequestFactory

        for method in list(methods):
            request = getattr(RequestFactory(), method)("/")
            request.user = SimpleNamespace(is_authenticated=False)
            response = view(request, **dict.fromkeys(pattern.pattern.converters, 1))
            if response.status_code == 405:
                methods.discard(method)
        declared |= {(pattern.name, m) for m in methods}
    assert declared == covered


def test_a_clinician_of_site_a_never_sees_site_bs_cases(
    client, api_client_of, clinician_a, clinician_b, site_a, site_b
):
    mine = CaseFactory(owner=clinician_a)
    theirs = CaseFactory(owner=clinician_b)
    assert (mine.site, theirs.site) == (site_a, site_b)
    client.force_login(clinician_a)
    listed = client.get(reverse("cases:list")).content.decode()
    assert reverse("cases:detail", args=[mine.pk]) in listed
    assert reverse("cases:detail", args=[theirs.pk]) not in listed
    assert client.get(reverse("cases:detail", args=[theirs.pk])).status_code == 404
    api = api_client_of(clinician_a)
    assert api.get(f"/api/v1/cases/{theirs.pk}/").status_code == 404
    assert [c["id"] for c in api.get("/api/v1/cases/").json()["results"]] == [mine.pk]
    # Not even a colleague of the same site sees another clinician's case.
    colleague = member(site_a, username="colleague-at-a", roles=["clinician"])
    client.force_login(colleague)
    assert client.get(reverse("cases:detail", args=[mine.pk])).status_code == 404


@pytest.mark.slow
def test_each_case_records_its_uploaders_site(clinician_a, clinician_b, site_a, site_b):
    case_a = cases.create_case(owner=clinician_a, files=[upload_of("2168a917.jpg")])
    case_b = cases.create_case(owner=clinician_b, files=[upload_of("2168a917.jpg")])
    assert (case_a.site, case_b.site) == (site_a, site_b)
    # Moving the clinician later leaves the case where it was made.
    services.set_site(actor=None, user=clinician_a, site=site_b)
    case_a.refresh_from_db()
    assert case_a.site == site_a
    again = cases.create_case(owner=clinician_a, files=[upload_of("2168a917.jpg")])
    assert again.site == site_b


def test_a_dicom_upload_takes_the_uploaders_site_not_its_institution(clinician_a, site_a, site_b):
    """The header names site B's hospital; the case is at its uploader's site A, and the
    institution's name is stored nowhere on the case."""
    from tests.cases.test_input_safety import make_dicom

    dicom = make_dicom(InstitutionName="Hospital B")
    case = cases.create_case(owner=clinician_a, files=[upload_of("study.dcm", dicom)])
    assert case.site == site_a
    stored = [getattr(case, f.attname) for f in Case._meta.concrete_fields]
    assert not any("Hospital B" in str(value) for value in stored)
    assert b"Hospital B" not in case.images.get().original.read()


def test_a_site_admin_sees_and_manages_only_their_own_sites_accounts(
    client, site_a, site_b, site_admin_a, clinician_a, clinician_b
):
    client.force_login(site_admin_a)
    listed = client.get(reverse("user-list")).content.decode()
    assert 'data-user="dr-at-a"' in listed
    assert 'data-user="dr-at-b"' not in listed
    assert client.get(reverse("user-detail", args=[clinician_b.pk])).status_code == 404
    response = client.post(reverse("user-detail", args=[clinician_b.pk]), {"action": "deactivate"})
    assert response.status_code == 404
    clinician_b.refresh_from_db()
    assert clinician_b.is_active
    assert client.get(reverse("sites:users", args=[site_b.pk])).status_code == 404
    page = client.get(reverse("sites:users", args=[site_a.pk])).content.decode()
    assert 'data-user="dr-at-a"' in page
    assert 'data-user="dr-at-b"' not in page
    from apps.accounts import users

    with pytest.raises(PermissionDenied, match="your own site"):
        users.set_roles(actor=site_admin_a, user=clinician_b, roles=["annotator"])
    # A new account joins its creator's site.
    created = client.post(
        reverse("user-create"),
        {"username": "new-at-a", "roles": ["clinician"], "password": "a-long-new-secret-2026"},
    )
    assert created.status_code == 302
    newcomer = services.users_of(site_a).get(username="new-at-a")
    assert services.site_of(newcomer) == site_a


def test_a_site_admin_unlocks_a_locked_account_of_their_site_audited(
    client, site_a, site_b, site_admin_a, site_admin_b
):
    from django.test import Client

    locked = member(site_a, username="locked-at-a", roles=["clinician"])
    for n in range(5):  # the real log-in page, until django-axes locks the account
        Client().post(
            reverse("login"), {"username": locked.username, "password": f"wrong-{n}"},
            REMOTE_ADDR=f"10.66.0.{n + 1}",
        )  # fmt: skip
    refused = Client().post(
        reverse("login"), {"username": locked.username, "password": PASSWORD},
        REMOTE_ADDR="10.66.0.9",
    )  # fmt: skip
    assert refused.status_code == 429
    assert "ask a site admin of your site to unlock it" in refused.content.decode()

    # B's site admin cannot even see it.
    client.force_login(site_admin_b)
    assert client.post(reverse("sites:unlock", args=[site_a.pk, locked.pk])).status_code == 404
    assert client.post(reverse("sites:unlock", args=[site_b.pk, locked.pk])).status_code == 404
    assert not AuditEvent.objects.filter(action="auth.unlocked").exists()

    client.force_login(site_admin_a)
    page = client.get(reverse("sites:users", args=[site_a.pk])).content.decode()
    row = re.search(r'<tr data-user="locked-at-a" data-locked>(.*?)</tr>', page, re.S)
    assert row is not None
    assert "Unlock" in row[1]
    response = client.post(reverse("sites:unlock", args=[site_a.pk, locked.pk]))
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="auth.unlocked")
    assert event.actor == site_admin_a
    assert event.target_id == str(locked.pk)
    assert event.after["attempts_forgotten"] >= 1
    logged_in = Client().post(
        reverse("login"), {"username": locked.username, "password": PASSWORD},
        REMOTE_ADDR="10.66.0.10",
    )  # fmt: skip
    assert logged_in.status_code == 302
    # Unlocking an account that is not locked is refused and not audited again.
    again = client.post(reverse("sites:unlock", args=[site_a.pk, locked.pk]), follow=True)
    assert "is not locked" in again.content.decode()
    assert AuditEvent.objects.filter(action="auth.unlocked").count() == 1


def test_a_superuser_creates_a_site_and_moves_an_account(client, clinician_a, site_b):
    from django.contrib.auth import get_user_model

    root = get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    client.force_login(root)
    response = client.post(reverse("sites:index"), {"action": "create", "name": "Hospital C"})
    assert response.status_code == 302
    site_c = Site.objects.get(slug="hospital-c")
    assert AuditEvent.objects.filter(action="site.create", target_id=str(site_c.pk)).exists()
    response = client.post(
        reverse("sites:index"), {"action": "move", "user": clinician_a.pk, "site": site_c.pk}
    )
    assert response.status_code == 302
    assert services.site_of(clinician_a) == site_c
    event = AuditEvent.objects.get(action="site.member", target_id=str(clinician_a.pk), actor=root)
    assert event.after["site"] == site_c.pk
    duplicate = client.post(reverse("sites:index"), {"action": "create", "name": "hospital c"})
    assert duplicate.status_code == 400
    assert Site.objects.filter(name__iexact="hospital c").count() == 1


def test_every_new_account_belongs_to_the_default_site(db):
    user = UserFactory(username="fresh")
    site = services.site_of(user)
    assert site.is_default
    assert user.site_membership.site == site
    assert Site.objects.filter(is_default=True).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_migration_puts_existing_accounts_and_cases_in_the_default_site():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    cases_leaf = "0013_case_site_prediction_operating_point"
    cases_before = ("cases", "0012_caseimage_status_held")
    executor.migrate([("sites", None), cases_before])
    old = executor.loader.project_state([cases_before]).apps
    user_model = old.get_model("auth", "User")
    owner = user_model.objects.create(username="before-sites")
    case_model = old.get_model("cases", "Case")
    case = case_model.objects.create(owner=owner, patient_ref="OLD-1")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([("sites", "0002_default_site"), ("cases", cases_leaf)])
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    default = Site.objects.get(is_default=True)
    assert services.site_of(user_model.objects.get(pk=owner.pk)) == default
    assert Case.all_objects.get(pk=case.pk).site == default

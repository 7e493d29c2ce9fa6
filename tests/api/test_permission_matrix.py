"""Every API endpoint x every role, each cell an exact status code (deny by default).

Object-level cells use the first clinician's case, image and explanation:
the other clinician gets 404 (not 403, as on the web: its existence is not
theirs to know); annotators read predicted images only through the labelling
routes, by the image's opaque reference (the routes that take an image's number
are its owner's), and not cases; model admins see only the registry.

The world (real predictions, a real Grad-CAM, registry rows, a training run) is
built once for the module, not once per cell: every test runs in its own
transaction nested in the world's, so what a cell writes is rolled back before
the next one, and the world's transaction is rolled back when the module ends.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.test import override_settings
from django.urls import resolve

from apps.cases.access import image_ref
from tests.api.conftest import ROLES, build_world, segmented_ct_case
from tests.conftest import upload_of
from tests.factories import PASSWORD, UserFactory


@pytest.fixture(scope="module")
def module_world(django_db_setup, django_db_blocker, tmp_path_factory, ct_tiny_model):
    """The users, the world and its media folder, built once in a transaction of their own."""
    from apps.models.services import register_artifact
    from apps.sites.services import default_site

    media = tmp_path_factory.mktemp("matrix-media")
    with (
        django_db_blocker.unblock(),
        override_settings(MEDIA_ROOT=media),
        transaction.atomic(),
    ):
        users = {
            "anonymous": None,
            "clinician": UserFactory(username="dr-a", roles=["clinician"]),
            "other_clinician": UserFactory(username="dr-b", roles=["clinician"]),
            "annotator": UserFactory(username="annotator-a", roles=["annotator"]),
            "model_admin": UserFactory(username="admin-a", roles=["model_admin"]),
        }
        production = register_artifact(
            artifact_path=django_settings.CXR_BUNDLED_MODEL, make_production=True
        )
        register_artifact(artifact_path=ct_tiny_model, make_production=True)
        world = build_world(
            users["clinician"], users["other_clinician"], users["model_admin"], production
        )
        world.ct_image = segmented_ct_case(users["clinician"]).images.get()
        world.site = default_site()  # every account and case of the world is there
        yield SimpleNamespace(world=world, users=users, media=media)
        transaction.set_rollback(True)


@pytest.fixture
def media_root(settings, module_world):
    """The world's media folder (instead of a fresh one per test): its files are there."""
    settings.MEDIA_ROOT = module_world.media
    return module_world.media


@pytest.fixture
def world(module_world, db):
    return module_world.world


@pytest.fixture
def users(module_world, db):
    return module_world.users


def _codes(anonymous, clinician, other, annotator, admin) -> dict[str, int]:
    return dict(zip(ROLES, (anonymous, clinician, other, annotator, admin), strict=True))


def _token_body(world, users, role):
    user = users[role]
    if user is None:
        return {"username": "nobody", "password": "wrong"}
    return {"username": user.username, "password": PASSWORD}


# (id, method, path(world), body(world, users, role) | None, format, expected codes)
MATRIX = [
    ("token-obtain", "post", lambda w: "/api/v1/auth/token/", _token_body, "json",
     _codes(400, 200, 200, 200, 200)),
    ("token-revoke", "delete", lambda w: "/api/v1/auth/token/", None, None,
     _codes(401, 204, 204, 204, 204)),
    ("token-list", "get", lambda w: "/api/v1/auth/tokens/", None, None,
     _codes(401, 200, 200, 200, 200)),
    # One of the first clinician's tokens: only its owner may revoke it.
    ("token-detail", "delete", lambda w: f"/api/v1/auth/tokens/{w.token_id}/", None, None,
     _codes(401, 204, 404, 404, 404)),
    ("me", "get", lambda w: "/api/v1/me/", None, None, _codes(401, 200, 200, 200, 200)),
    ("case-list", "get", lambda w: "/api/v1/cases/", None, None,
     _codes(401, 200, 200, 403, 403)),
    ("case-create", "post", lambda w: "/api/v1/cases/",
     lambda w, u, r: {"images": [upload_of("2168a917.jpg")], "patient_ref": "P-1"}, "multipart",
     _codes(401, 201, 201, 403, 403)),
    ("case-detail", "get", lambda w: f"/api/v1/cases/{w.case.pk}/", None, None,
     _codes(401, 200, 404, 403, 403)),
    ("case-detail", "delete", lambda w: f"/api/v1/cases/{w.case.pk}/", None, None,
     _codes(401, 204, 404, 403, 403)),
    # The routes that take an image's number are its owner's; readers use the labelling routes.
    ("image-list", "get", lambda w: "/api/v1/images/", None, None,
     _codes(401, 200, 200, 403, 403)),
    ("image-detail", "get", lambda w: f"/api/v1/images/{w.image.pk}/", None, None,
     _codes(401, 200, 404, 403, 403)),
    ("image-file", "get", lambda w: f"/api/v1/images/{w.image.pk}/file/", None, None,
     _codes(401, 200, 404, 403, 403)),
    ("image-lung-mask", "get", lambda w: f"/api/v1/images/{w.image.pk}/lung-mask/", None, None,
     _codes(401, 200, 404, 403, 403)),
    ("image-lung-outline", "get", lambda w: f"/api/v1/images/{w.image.pk}/lung-outline/",
     None, None, _codes(401, 200, 404, 403, 403)),
    # CT slices: the owner only (annotators judge X-rays; a model admin sees no patient data).
    ("image-segmentation", "get", lambda w: f"/api/v1/images/{w.ct_image.pk}/segmentation/",
     None, None, _codes(401, 200, 404, 403, 403)),
    ("image-segmentation-mask", "get",
     lambda w: f"/api/v1/images/{w.ct_image.pk}/segmentation/masks/ggo/", None, None,
     _codes(401, 200, 404, 403, 403)),
    # The world's segmentation is done, so the owner's retry is refused: 409.
    ("image-segmentation-retry", "post",
     lambda w: f"/api/v1/images/{w.ct_image.pk}/segmentation/retry/", None, None,
     _codes(401, 409, 404, 403, 403)),
    ("image-explanations", "post", lambda w: f"/api/v1/images/{w.image.pk}/explanations/",
     lambda w, u, r: {"method": "occlusion"}, "json",
     _codes(401, 202, 404, 403, 403)),
    # The world's prediction is done, so the owner's retry is refused: 409 (tests/api has the 202).
    ("image-prediction-retry", "post",
     lambda w: f"/api/v1/images/{w.image.pk}/prediction/retry/", None, None,
     _codes(401, 409, 404, 403, 403)),
    ("labelling-queue", "get", lambda w: "/api/v1/labelling/queue/", None, None,
     _codes(401, 403, 403, 200, 403)),
    ("labelling-mine", "get", lambda w: "/api/v1/labelling/mine/", None, None,
     _codes(401, 403, 403, 200, 403)),
    # A reader's image routes take the image's opaque reference, never its number.
    ("labelling-image", "get", lambda w: f"/api/v1/labelling/images/{image_ref(w.image)}/",
     None, None, _codes(401, 403, 403, 200, 403)),
    ("labelling-image-file", "get",
     lambda w: f"/api/v1/labelling/images/{image_ref(w.image)}/file/", None, None,
     _codes(401, 403, 403, 200, 403)),
    ("labelling-image-labels", "post",
     lambda w: f"/api/v1/labelling/images/{image_ref(w.image)}/labels/",
     lambda w, u, r: {"label": "normal"}, "json",
     _codes(401, 403, 403, 201, 403)),
    # Readers see a map only after their verdict, where the deployment shows them the
    # model's answer (CXR_LABEL_SHOW_MODEL, off by default): 404 here
    # (tests/api/test_annotator_api.py has the 200).
    ("labelling-explanation-overlay", "get",
     lambda w: f"/api/v1/labelling/images/{image_ref(w.image)}/explanations/gradcam/overlay/",
     None, None, _codes(401, 403, 403, 404, 403)),
    ("explanation-detail", "get", lambda w: f"/api/v1/explanations/{w.explanation.pk}/",
     None, None, _codes(401, 200, 404, 403, 403)),
    # The world's explanation is done, so the owner's retry is refused: 409
    # (tests/api/test_explanation_retry.py has the 202).
    ("explanation-retry", "post",
     lambda w: f"/api/v1/explanations/{w.explanation.pk}/retry/", None, None,
     _codes(401, 409, 404, 403, 403)),
    ("explanation-overlay", "get",
     lambda w: f"/api/v1/explanations/{w.explanation.pk}/overlay/", None, None,
     _codes(401, 200, 404, 403, 403)),
    ("explanation-heatmap", "get",
     lambda w: f"/api/v1/explanations/{w.explanation.pk}/heatmap/", None, None,
     _codes(401, 200, 404, 403, 403)),
    ("model-list", "get", lambda w: "/api/v1/models/", None, None,
     _codes(401, 403, 403, 403, 200)),
    ("model-detail", "get", lambda w: f"/api/v1/models/{w.candidate.pk}/", None, None,
     _codes(401, 403, 403, 403, 200)),
    ("model-promote", "post", lambda w: f"/api/v1/models/{w.candidate.pk}/promote/",
     lambda w, u, r: {"reason": "matrix"}, "json",
     _codes(401, 403, 403, 403, 200)),
    # The world's candidate has no operating curve on its card: 409 for the admin
    # (tests/api/test_model_operating_point.py has the 200).
    ("model-operating-point", "post", lambda w: f"/api/v1/models/{w.candidate.pk}/operating-point/",
     lambda w, u, r: {"reset": True}, "json",
     _codes(401, 403, 403, 403, 409)),
    ("model-rollback", "post", lambda w: "/api/v1/models/rollback/", None, None,
     _codes(401, 403, 403, 403, 200)),
    ("training-run-list", "get", lambda w: "/api/v1/training-runs/", None, None,
     _codes(401, 403, 403, 403, 200)),
    # The world already has a pending run, so a second one is refused: 409 for the admin.
    ("training-run-create", "post", lambda w: "/api/v1/training-runs/", None, None,
     _codes(401, 403, 403, 403, 409)),
    ("training-run-detail", "get", lambda w: f"/api/v1/training-runs/{w.run.pk}/", None, None,
     _codes(401, 403, 403, 403, 200)),
    # Datasets: model admins only; the image's owner does not see its provenance either,
    # and model admins only an image in a snapshot: the world's image is in none, a 404
    # (tests/models/test_provenance_access.py has the 200).
    ("image-provenance", "get", lambda w: f"/api/v1/images/{w.image.pk}/provenance/",
     None, None, _codes(401, 403, 403, 403, 404)),
    ("snapshot-list", "get", lambda w: "/api/v1/snapshots/", None, None,
     _codes(401, 403, 403, 403, 200)),
    ("snapshot-detail", "get", lambda w: f"/api/v1/snapshots/{w.run.snapshot_id}/", None, None,
     _codes(401, 403, 403, 403, 200)),
    ("snapshot-export", "get", lambda w: f"/api/v1/snapshots/{w.run.snapshot_id}/export/",
     None, None, _codes(401, 403, 403, 403, 200)),
    # Sites: model admins only. The world's site has predictions but no confirmed label, so
    # a study, a proposal or an applied point is refused (409), and there is nothing to roll
    # back (tests/sites has the 200s and 201s).
    ("site-list", "get", lambda w: "/api/v1/sites/", None, None,
     _codes(401, 403, 403, 403, 200)),
    ("site-validation", "get",
     lambda w: f"/api/v1/sites/{w.site.pk}/models/{w.production.pk}/validation/", None, None,
     _codes(401, 403, 403, 403, 409)),
    ("site-operating-points", "get",
     lambda w: f"/api/v1/sites/{w.site.pk}/models/{w.production.pk}/operating-points/",
     None, None, _codes(401, 403, 403, 403, 200)),
    ("site-operating-points", "post",
     lambda w: f"/api/v1/sites/{w.site.pk}/models/{w.production.pk}/operating-points/",
     lambda w, u, r: {"target": "covid19_sensitivity", "goal": 0.9}, "json",
     _codes(401, 403, 403, 403, 409)),
    ("site-operating-point-propose", "post",
     lambda w: f"/api/v1/sites/{w.site.pk}/models/{w.production.pk}/operating-points/propose/",
     lambda w, u, r: {"target": "covid19_sensitivity", "goal": 0.9}, "json",
     _codes(401, 403, 403, 403, 409)),
    ("site-operating-point-rollback", "post",
     lambda w: f"/api/v1/sites/{w.site.pk}/models/{w.production.pk}/operating-points/rollback/",
     None, None, _codes(401, 403, 403, 403, 409)),
    # The world's production model (the tiny test model) has no drift reference: a report
    # that says so.
    ("site-drift", "get", lambda w: f"/api/v1/sites/{w.site.pk}/drift/", None, None,
     _codes(401, 403, 403, 403, 200)),
    # The reading room: radiologists only (none in this matrix: tests/reading has their
    # cells, another site's 404 included). A case's reports: its clinician reads them (none
    # signed yet: an empty history); the other clinician gets 404; signing is a
    # radiologist's, so the clinician's POST is a 403.
    ("reading-worklist", "get", lambda w: "/api/v1/reading/worklist/", None, None,
     _codes(401, 403, 403, 403, 403)),
    ("reading-reports", "get", lambda w: f"/api/v1/reading/cases/{w.case.pk}/reports/",
     None, None, _codes(401, 200, 404, 403, 403)),
    ("reading-reports", "post", lambda w: f"/api/v1/reading/cases/{w.case.pk}/reports/",
     lambda w, u, r: {"impression": "normal"}, "json", _codes(401, 403, 403, 403, 403)),
    ("schema", "get", lambda w: "/api/v1/schema/", None, None, _codes(200, 200, 200, 200, 200)),
    ("docs", "get", lambda w: "/api/v1/docs/", None, None, _codes(200, 200, 200, 200, 200)),
    ("redoc", "get", lambda w: "/api/v1/redoc/", None, None, _codes(200, 200, 200, 200, 200)),
]  # fmt: skip

CELLS = [
    pytest.param(method, path, body, fmt, role, codes[role], id=f"{name}-{role}")
    for name, method, path, body, fmt, codes in MATRIX
    for role in ROLES
]


@pytest.mark.parametrize(("method", "path", "body", "fmt", "role", "expected"), CELLS)
def test_permission_matrix(world, users, api_as, method, path, body, fmt, role, expected):
    client = api_as(role)
    url = path(world)
    data = body(world, users, role) if body else None
    response = (
        getattr(client, method)(url, data, format=fmt) if data else getattr(client, method)(url)
    )
    assert response.status_code == expected, getattr(response, "data", response)
    if expected == 401:
        assert response["WWW-Authenticate"] == "Token"
    if expected >= 400:
        assert response.json()["error"]["status"] == expected


def test_the_matrix_covers_every_api_route_and_method():
    from apps.api.urls import urlpatterns

    stub = SimpleNamespace(pk=1)
    fake_world = SimpleNamespace(
        case=stub,
        image=stub,
        ct_image=stub,
        explanation=stub,
        candidate=stub,
        production=stub,
        site=stub,
        run=SimpleNamespace(pk=1, snapshot_id=1),
        token_id="abc",
    )
    covered = {(resolve(path(fake_world)).url_name, method) for _, method, path, *_ in MATRIX}
    declared = set()
    for pattern in urlpatterns:
        if pattern.name == "not-found":
            continue
        callback: Any = pattern.callback  # a DRF view function: its view class is .cls
        view = callback.cls
        methods = {m for m in view.http_method_names if hasattr(view, m)} - {"options", "head"}
        declared |= {(pattern.name, m) for m in methods}
    assert declared == covered


def test_another_clinicians_case_and_its_files_are_not_found(world, api_as):
    client = api_as("other_clinician")
    image, explanation = world.image, world.explanation
    for url in (
        f"/api/v1/cases/{world.case.pk}/",
        f"/api/v1/images/{image.pk}/",
        f"/api/v1/images/{image.pk}/file/",
        f"/api/v1/images/{image.pk}/lung-mask/",
        f"/api/v1/images/{image.pk}/lung-outline/",
        f"/api/v1/explanations/{explanation.pk}/overlay/",
        f"/api/v1/explanations/{explanation.pk}/heatmap/",
        f"/api/v1/images/{world.ct_image.pk}/segmentation/",
        f"/api/v1/images/{world.ct_image.pk}/segmentation/masks/lungs/",
    ):
        assert client.get(url).status_code == 404, url
    listed = client.get("/api/v1/cases/").json()
    assert [c["id"] for c in listed["results"]] == [world.other_case.pk]
    listed = client.get("/api/v1/images/").json()
    assert image.pk not in {i["id"] for i in listed["results"]}


def test_annotator_never_sees_patient_ref(world, api_as):
    client = api_as("annotator")
    for url in (
        "/api/v1/labelling/queue/",
        f"/api/v1/labelling/images/{image_ref(world.image)}/",
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        text = response.content.decode()
        assert "patient_ref" not in text, url
        assert "PSEUDO-API-1" not in text, url
        assert "PSEUDO-API-2" not in text, url
    # The clinician who owns the case does see it.
    owner = api_as("clinician").get(f"/api/v1/cases/{world.case.pk}/").json()
    assert owner["patient_ref"] == "PSEUDO-API-1"

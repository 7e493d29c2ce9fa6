"""Two sites with their own accounts, and labelled images whose model probabilities a
test chooses (factory rows: no model runs unless a test runs the real prediction)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from apps.cases.models import CaseImage, Prediction
from apps.models.models import ModelVersion
from apps.sites.models import Site
from apps.sites.services import set_site
from tests.factories import (
    CaseFactory,
    CaseImageFactory,
    ModelVersionFactory,
    PredictionFactory,
    UserFactory,
)

CLASSES = ("covid19", "pneumonia", "normal")


def member(site: Site, **kwargs):
    """A new account of ``site``."""
    user = UserFactory(**kwargs)
    set_site(actor=None, user=user, site=site)
    return user


@pytest.fixture
def site_a(db) -> Site:
    return Site.objects.create(name="Hospital A", slug="hospital-a")


@pytest.fixture
def site_b(db) -> Site:
    return Site.objects.create(name="Hospital B", slug="hospital-b")


@pytest.fixture
def clinician_a(site_a):
    return member(site_a, username="dr-at-a", roles=["clinician"])


@pytest.fixture
def clinician_b(site_b):
    return member(site_b, username="dr-at-b", roles=["clinician"])


@pytest.fixture
def site_admin_a(site_a):
    return member(site_a, username="admin-of-a", roles=["site_admin"])


@pytest.fixture
def site_admin_b(site_b):
    return member(site_b, username="admin-of-b", roles=["site_admin"])


@pytest.fixture
def version(db) -> ModelVersion:
    return ModelVersionFactory(name="site-study-model")


Labeller = Callable[..., list[Prediction]]


@pytest.fixture
def labelled(db) -> Labeller:
    """``labelled(owner, version, [(label, (p_covid, p_pneumonia, p_normal)), ...])``: one
    case of ``owner`` per image, each image confirmed with ``label`` and predicted by
    ``version`` with those probabilities. The stored image file is one small fixture."""

    def make(
        owner, version: ModelVersion, rows: Sequence[tuple[str, Sequence[float]]]
    ) -> list[Prediction]:
        made = []
        for label, probs in rows:
            image: CaseImage = CaseImageFactory(
                case=CaseFactory(owner=owner), confirmed_label=label
            )
            made.append(
                PredictionFactory(
                    image=image,
                    model_version=version,
                    probabilities=dict(zip(CLASSES, map(float, probs), strict=True)),
                )
            )
        return made

    return make


@pytest.fixture
def api_client_of(db):
    """``api_client_of(user)``: an APIClient sending a token of ``user``."""
    from knox.models import AuthToken
    from rest_framework.test import APIClient

    def make(user) -> APIClient:
        client = APIClient()
        _, token = AuthToken.objects.create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        return client

    return make

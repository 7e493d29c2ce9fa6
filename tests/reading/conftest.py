"""Two sites, a radiologist and a clinician at each, and studies with chosen model
probabilities (factory rows: no model runs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from apps.cases.models import Case
from apps.sites.models import Site
from apps.sites.services import default_site, set_site
from tests.factories import CaseFactory, CaseImageFactory, PredictionFactory, UserFactory


def member(site: Site, **kwargs):
    user = UserFactory(**kwargs)
    set_site(actor=None, user=user, site=site)
    return user


@pytest.fixture
def site(db) -> Site:
    return default_site()


@pytest.fixture
def other_site(db) -> Site:
    return Site.objects.create(name="Hospital B", slug="hospital-b")


@pytest.fixture
def radiologist(site):
    return member(site, username="rad-a", roles=["radiologist"])


@pytest.fixture
def other_radiologist(other_site):
    return member(other_site, username="rad-b", roles=["radiologist"])


@pytest.fixture
def owner(site):
    return member(site, username="dr-owner", roles=["clinician"])


@pytest.fixture
def other_owner(other_site):
    return member(other_site, username="dr-other-site", roles=["clinician"])


Study = Callable[..., Case]


@pytest.fixture
def study(media_root) -> Study:
    """``study(owner, (p_covid, p_pneumonia, p_normal), patient_ref=...)``: a case with one
    predicted image."""

    def make(owner, probs: Sequence[float] | None = (0.1, 0.2, 0.7), **kwargs) -> Case:
        case = CaseFactory(owner=owner, **kwargs)
        image = CaseImageFactory(case=case)
        if probs is not None:
            PredictionFactory(
                image=image,
                probabilities=dict(zip(("covid19", "pneumonia", "normal"), probs, strict=True)),
            )
        return case

    return make

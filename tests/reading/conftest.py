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


def stored_dicom(data: bytes) -> bytes:
    """A DICOM file as intake stores it: de-identified with the platform's key."""
    from django.conf import settings

    from apps.cases.deidentify import deidentify
    from ml.data.dicom import read_dataset

    stored, _ = deidentify(read_dataset(data), key=settings.CXR_PSEUDONYM_KEY)
    return stored


@pytest.fixture
def dicom_study(media_root) -> Study:
    """``dicom_study(owner, probs, bits=16, **case_fields)``: a case with one predicted image
    whose stored original is a de-identified ``bits``-bit DICOM of the fixture X-ray."""
    from django.core.files.base import ContentFile

    from tests.cases.test_input_safety import make_dicom

    def make(owner, probs: Sequence[float] | None = (0.1, 0.2, 0.7), bits: int = 16, **kwargs):
        case = CaseFactory(owner=owner, **kwargs)
        dicom = stored_dicom(make_dicom(bits=bits, PixelSpacing=[0.2, 0.2]))
        image = CaseImageFactory(
            case=case, source_format="dicom", original=ContentFile(dicom, name="study.dcm")
        )
        if probs is not None:
            PredictionFactory(
                image=image,
                probabilities=dict(zip(("covid19", "pneumonia", "normal"), probs, strict=True)),
            )
        return case

    return make

"""Drift monitoring through the real prediction path: a site whose films are shifted (lower
contrast and a blur, as a new detector or processing would give) drifts from the model's
reference and another site with the same films unshifted does not; only the drifting
site's gauge is above the drift line and only it tells the model admins, once."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path, PurePosixPath

import pytest
from django.core import mail
from django.urls import reverse
from PIL import Image, ImageEnhance, ImageFilter

from apps.cases import services as cases
from apps.cases.models import Prediction
from apps.models.models import Notification
from apps.sites import drift
from apps.sites.models import DriftCheck, DriftObservation
from cxrplatform.jobs import run_job_now
from cxrplatform.metrics import exposition
from tests.conftest import IMAGES, fixture_manifest
from tests.factories import UserFactory

# The fixture films (frontal); the window needs CXR_DRIFT_MIN_IMAGES of them per site.
FILMS = [row["path"] for row in fixture_manifest()][:12]


def _shifted(name: str) -> bytes:
    """The film with a third less contrast, darker, and blurred, as a PNG."""
    with Image.open(IMAGES / name) as image:
        gray = image.convert("L")
        gray = ImageEnhance.Contrast(gray).enhance(0.55)
        gray = ImageEnhance.Brightness(gray).enhance(0.8)
        gray = gray.filter(ImageFilter.GaussianBlur(3))
        out = io.BytesIO()
        gray.save(out, format="PNG")
        return out.getvalue()


def _predict(owner, name: str, content: bytes | None = None) -> Prediction:
    """Upload and predict one film through the real path (the tiny model, this process)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = (IMAGES / name).read_bytes() if content is None else content
    kind = "image/jpeg" if content is None else "image/png"
    upload = SimpleUploadedFile(name if content is None else f"{name}.png", data, kind)
    case = cases.create_case(owner=owner, files=[upload], patient_ref="DRIFT-TEST")
    prediction = Prediction.objects.get(image__case=case)
    run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.DONE, prediction.error
    return prediction


def _write_reference(version, features: dict) -> Path:
    """A reference beside the version's stored artifact, for its sha256."""
    storage = version.artifact.storage
    path = Path(storage.path(str(PurePosixPath(version.artifact.name).parent / "x"))).parent
    target = path / drift.REFERENCE_NAME
    target.write_text(
        json.dumps({"model_sha256": version.sha256, "split": "test", "n": 12, "features": features})
    )
    drift.forget_references()
    return target


def _gauges(text: str, site: str) -> dict[str, float]:
    """``cxr_site_drift`` of one site from the metrics text: feature -> value."""
    out = {}
    for line in text.splitlines():
        if line.startswith("cxr_site_drift{") and f'site="{site}"' in line:
            feature = line.split('feature="', 1)[1].split('"', 1)[0]
            out[feature] = float(line.rsplit(" ", 1)[1])
    return out


def _shown_on_page_and_api(client, site_a, site_b, drifting_a: set[str]) -> None:
    """The drift page, its plot and the API of site A show the drifting features; site
    B's page shows none."""
    page = client.get(reverse("sites:drift", args=[site_a.pk])).content.decode()
    assert 'data-level="drift"' in page
    assert "model admins told" in page
    feature = sorted(drifting_a)[0]
    plot = client.get(reverse("sites:drift-plot", args=[site_a.pk, feature]))
    assert plot.status_code == 200
    assert plot["Content-Type"] == "image/svg+xml"
    assert b"<svg" in plot.content
    assert b"PSI" in plot.content
    page_b = client.get(reverse("sites:drift", args=[site_b.pk])).content.decode()
    assert 'data-level="drift"' not in page_b
    assert 'data-level="none"' in page_b
    api = client.get(f"/api/v1/sites/{site_a.pk}/drift/").json()
    levels = {row["feature"]: row["level"] for row in api["features"]}
    assert {f for f, level in levels.items() if level == "drift"} == drifting_a
    assert api["reference"] == {"split": "test", "n": 12}


@pytest.fixture(autouse=True)
def _small_window(settings):
    settings.CXR_DRIFT_MIN_IMAGES = 10
    drift.forget_references()
    yield
    drift.forget_references()


def test_a_version_without_a_reference_records_nothing(
    client, site_a, clinician_a, production_model, model_admin, monkeypatch
):
    # The worker stays lean: without a reference scipy.stats is never imported (an import
    # would fail here and be logged).
    warnings: list[str] = []
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "scipy.stats", None)
        patched.setattr(drift.log, "warning", lambda message, *a, **k: warnings.append(message))
        prediction = _predict(clinician_a, FILMS[0])
    assert not DriftObservation.objects.filter(prediction=prediction).exists()
    assert warnings == []
    client.force_login(model_admin)
    page = client.get(reverse("sites:drift", args=[site_a.pk])).content.decode()
    assert "No reference for this version" in page
    api = client.get(f"/api/v1/sites/{site_a.pk}/drift/").json()
    assert api["reference"] is None
    assert api["features"] == []
    assert drift.check_all() == {
        "checked": 0,
        "reason": "no production classifier with a drift reference",
    }


@pytest.mark.slow
def test_a_shifted_site_drifts_an_unshifted_one_does_not(
    client,
    site_a,
    site_b,
    clinician_a,
    clinician_b,
    production_model,
    model_admin,
    django_capture_on_commit_callbacks,
):
    model_admin.email = "models@hospital.invalid"
    model_admin.save()
    UserFactory(username="no-mail-admin", roles=["model_admin"], email="")
    # Recording starts once the version has a reference; the test's reference is the
    # unshifted films' features as the worker records them (site B's).
    _write_reference(production_model, {})
    at_b = [_predict(clinician_b, name) for name in FILMS]
    for name in FILMS:
        _predict(clinician_a, name, _shifted(name))
    observed_b = [p.drift_observation.features for p in at_b]
    assert all(o["lung_mean"] is not None and o["ood_score"] is not None for o in observed_b)
    reference = {f: [o[f] for o in observed_b] for f in drift.FEATURES}
    _write_reference(production_model, reference)

    with django_capture_on_commit_callbacks(execute=True):
        outcome = drift.check_all()
    assert outcome["checked"] == 2
    drifting_a = set(outcome["drifting"][site_a.slug])
    assert drifting_a, outcome
    assert outcome["drifting"][site_b.slug] == []
    latest_b = {c.feature: c for c in drift.latest_checks(site_b, production_model)}
    assert set(latest_b) == set(drift.FEATURES)
    assert all(c.level == "none" and c.n_recent == len(FILMS) for c in latest_b.values())
    assert all(a.site == site_a for a in DriftCheck.objects.filter(notified=True))

    # The gauge: site A above the drift line in the drifting features, site B near 0.
    text = exposition().decode()
    gauges_a, gauges_b = _gauges(text, site_a.slug), _gauges(text, site_b.slug)
    assert all(gauges_a[feature] > 0.25 for feature in drifting_a)
    assert set(gauges_b) == set(drift.FEATURES)
    assert max(gauges_b.values()) <= 0.1

    # The model admin with an address is told once, of site A only.
    assert len(mail.outbox) == 1
    assert site_a.name in mail.outbox[0].subject
    assert site_b.name not in mail.outbox[0].body
    assert mail.outbox[0].to == ["models@hospital.invalid"]
    assert reverse("sites:drift", args=[site_a.pk]) in mail.outbox[0].body
    # ... and on the registry page: one notification linking to site A's drift page.
    told = Notification.objects.filter(kind=Notification.Kind.SITE_DRIFT)
    assert {n.link for n in told} == {reverse("sites:drift", args=[site_a.pk])}
    assert [n.emailed_at is not None for n in told.filter(recipient=model_admin)] == [True]
    client.force_login(model_admin)
    registry = client.get(reverse("registry:index")).content.decode()
    assert f'href="{reverse("sites:drift", args=[site_a.pk])}" data-notification-link' in registry
    # A second check with the same window: still drift, nobody is told again.
    with django_capture_on_commit_callbacks(execute=True):
        drift.check_all()
    assert len(mail.outbox) == 1
    assert DriftCheck.objects.filter(site=site_a, notified=True).count() == len(drifting_a)

    # The page and the API show it.
    client.force_login(model_admin)
    _shown_on_page_and_api(client, site_a, site_b, drifting_a)


def test_a_feature_that_cannot_be_computed_never_fails_the_prediction(
    clinician_a, production_model, monkeypatch
):
    _write_reference(production_model, {"ood_score": [0.5] * 20})

    def broken(*args, **kwargs):
        raise RuntimeError("gate file unreadable")

    monkeypatch.setattr(drift, "_ood_score", broken)
    prediction = _predict(clinician_a, FILMS[1])
    features = prediction.drift_observation.features
    assert features["ood_score"] is None
    assert features["lung_area"] is not None
    assert features["predicted_class"] == prediction.label

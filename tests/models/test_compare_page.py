"""The comparison page as the README describes it: two versions side by side with their
metrics, per-source figures, confusion matrices, ROC and calibration plots and the
Grad-CAM training animation. On the two bundled classifiers and their real reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.urls import reverse

from apps.models.services import register_artifact

pytestmark = pytest.mark.django_db

BUNDLED = Path(__file__).resolve().parents[2] / "ml" / "bundled"


@pytest.fixture
def versions(db):
    compact = register_artifact(artifact_path=BUNDLED / "cxr-compact.keras")
    lungs = register_artifact(artifact_path=BUNDLED / "cxr-lungs" / "cxr-lungs.keras")
    return compact, lungs


@pytest.mark.slow
def test_compare_page_shows_per_source_figures_calibration_and_animations(
    login, model_admin, versions
):
    a, b = versions
    client = login(model_admin)
    page = client.get(reverse("registry:compare"), {"a": a.pk, "b": b.pk}).content.decode()

    # Per source: one row per source either was measured on; a source one version lacks
    # shows dashes, a shared one the accuracy difference.
    ea, eb = a.evaluation, b.evaluation
    sources = sorted(set(ea.per_source) | set(eb.per_source))
    assert sources == ["adult-normal", "covid-chestxray", "nih-cxr14", "pediatric-pneumonia"]
    for source in sources:
        assert f'<tr data-source="{source}">' in page
    covid_a, covid_b = ea.per_source["covid-chestxray"], eb.per_source["covid-chestxray"]
    assert f'<td class="num">{covid_a.n}</td><td class="num">{covid_a.accuracy:.3f}</td>' in page
    assert f'<td class="num">{covid_b.n}</td><td class="num">{covid_b.accuracy:.3f}</td>' in page
    diff = covid_b.accuracy - covid_a.accuracy
    assert f"{'+' if diff > 0 else ''}{diff:.3f}</td></tr>" in page

    for version in (a, b):
        calibration = reverse("registry:plot", args=[version.pk, "calibration"])
        animation = reverse("registry:training-animation", args=[version.pk])
        assert f'src="{calibration}"' in page
        assert f'src="{animation}"' in page
        svg = client.get(calibration)
        assert svg["Content-Type"] == "image/svg+xml"
        assert b"<svg" in svg.content
        gif = client.get(animation)
        assert gif["Content-Type"] == "image/gif"
        assert b"".join(gif.streaming_content)[:6] in (b"GIF87a", b"GIF89a")
    assert page.count('data-plot="calibration"') == 2


@pytest.mark.slow
def test_compare_page_says_what_a_version_lacks(login, model_admin, versions):
    a, b = versions
    a.training_animation = None
    a.metrics = {"macro_f1": 0.5}
    a.save(update_fields=["training_animation", "metrics"])
    page = (
        login(model_admin).get(reverse("registry:compare"), {"a": a.pk, "b": b.pk}).content.decode()
    )
    assert "No ROC or calibration curves stored for this version." in page
    assert "No training animation was recorded for this version." in page
    assert page.count('data-plot="calibration"') == 1
    # B's sources are listed, A's cells are dashes.
    assert (
        '<tr data-source="nih-cxr14"><th scope="row">nih-cxr14</th>\n      <td class="num">—'
        in page
    )

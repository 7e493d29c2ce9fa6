"""The local validation study of a model version at a site: figures equal to values
computed by hand on a small labelled set, through the service, the page, the CSV and the
API; which images it reads; the test split beside it; warnings; refusals; audit."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.sites import services
from apps.sites.models import SiteOperatingPoint
from tests.factories import ModelVersionFactory, PredictionFactory, operating_point

# Ten images of site A, (confirmed label, (p_covid19, p_pneumonia, p_normal)); the model's
# label is the argmax. By hand:
#   COVID-19: c1-c3 called COVID-19, c4 called normal      -> sensitivity 3/4
#   without COVID-19: 6, of which n1 called COVID-19         -> specificity 5/6
#   called COVID-19: c1-c3, n1                               -> PPV 3/4
#   not called COVID-19: c4, n2, n3, p1-p3 (5 without)       -> NPV 5/6
#   normal: n2, n3 called normal, n1 not                     -> normals called normal 2/3
#   pneumonia: p1, p2 called pneumonia, p3 normal            -> recall 2/3
#   correct: 3 + 2 + 2                                       -> accuracy 7/10
#   AUROC of p_covid19, COVID-19 against the rest: 0.9, 0.8, 0.7 beat all six negatives,
#   0.2 beats five of them (not n1's 0.6)                    -> 23/24
#   ... against normal only: 9 + 2 of 12 pairs               -> 11/12
#   calibration, top-class confidence and whether correct, grouped by confidence:
#   0.9: 1 image, 1 right; 0.8: 3, 3 right; 0.7: 3, 2 right; 0.6: 3, 1 right
#   ECE = (1 * 0.1 + 3 * 0.2 + 3 * |2/3 - 0.7| + 3 * |1/3 - 0.6|) / 10 = 1.6 / 10 = 0.16
ROWS = [
    ("covid19", (0.9, 0.05, 0.05)),
    ("covid19", (0.8, 0.1, 0.1)),
    ("covid19", (0.7, 0.1, 0.2)),
    ("covid19", (0.2, 0.1, 0.7)),
    ("normal", (0.6, 0.1, 0.3)),
    ("normal", (0.1, 0.2, 0.7)),
    ("normal", (0.05, 0.15, 0.8)),
    ("pneumonia", (0.1, 0.8, 0.1)),
    ("pneumonia", (0.05, 0.6, 0.35)),
    ("pneumonia", (0.1, 0.3, 0.6)),
]
BY_HAND = {
    "covid19_sensitivity": 3 / 4,
    "covid19_specificity": 5 / 6,
    "covid19_ppv": 3 / 4,
    "covid19_npv": 5 / 6,
    "normal_called_normal": 2 / 3,
    "accuracy": 7 / 10,
    "covid19_auroc": 23 / 24,
    "covid19_vs_normal_auroc": 11 / 12,
    "ece": 0.16,
}
RECALL_BY_HAND = {"covid19": 3 / 4, "pneumonia": 2 / 3, "normal": 2 / 3}
BUNDLED_CARD = Path(__file__).resolve().parents[2] / "ml" / "bundled" / "cxr-compact.card.json"


@pytest.fixture(autouse=True)
def _fewer_resamples(monkeypatch):
    monkeypatch.setattr(services, "N_BOOTSTRAP", 200)


@pytest.fixture
def evaluated(db):
    """A version with the bundled model's stored test-split figures and a card point."""
    card = json.loads(BUNDLED_CARD.read_text())
    return ModelVersionFactory(
        name="evaluated",
        metrics=card["metrics"],
        card={
            "classes": ["covid19", "pneumonia", "normal"],
            "preprocessing": {"input_size": 64, "channels": 1},
            "operating_point": operating_point(),
        },
    )


@pytest.fixture
def study_set(site_a, clinician_a, evaluated, labelled):
    return labelled(clinician_a, evaluated, ROWS)


def test_figures_equal_the_values_computed_by_hand(site_a, evaluated, study_set):
    study = services.validate(site=site_a, version=evaluated)
    v = study.validation
    assert v.n == 10
    assert v.counts == {"covid19": 4, "pneumonia": 3, "normal": 3}
    for name, value in BY_HAND.items():
        estimate = v.figures[name]
        assert estimate.value == pytest.approx(value, abs=1e-4), name
        assert estimate.value is not None, name
        assert estimate.low is not None, name
        assert estimate.high is not None, name
        assert estimate.low <= estimate.value + 1e-9 <= estimate.high + 2e-9, name
    for name, value in RECALL_BY_HAND.items():
        assert v.recall[name].value == pytest.approx(value, abs=1e-4), name
    assert v.figures["covid19_sensitivity"].n == 4
    assert v.figures["covid19_specificity"].n == 6
    assert [(b["n"], b["accuracy"]) for b in v.reliability] == [
        (3, pytest.approx(1 / 3, abs=1e-4)),
        (3, pytest.approx(2 / 3, abs=1e-4)),
        (3, 1.0),
        (1, 1.0),
    ]
    # Four COVID-19 images cannot decide a sensitivity: said plainly, with how many more.
    sensitivity = v.figures["covid19_sensitivity"]
    assert sensitivity.too_wide
    assert sensitivity.more_needed > 0
    assert any(
        w.startswith("COVID-19 sensitivity: the interval is")
        and f"about {sensitivity.more_needed} more would" in w
        for w in v.warnings
    )


def test_the_test_split_figures_stand_beside_them_never_recomputed(site_a, evaluated, study_set):
    study = services.validate(site=site_a, version=evaluated)
    stored = study.test_split
    assert stored["accuracy"].value == pytest.approx(0.80597, abs=1e-4)
    assert stored["covid19_sensitivity"].value == pytest.approx(0.85246, abs=1e-4)
    assert stored["covid19_sensitivity"].low == pytest.approx(0.75)
    assert stored["covid19_sensitivity"].high == pytest.approx(0.93223, abs=1e-4)
    assert stored["covid19_ppv"].value == pytest.approx(0.76471, abs=1e-4)
    assert stored["normal_called_normal"].value == pytest.approx(0.90323, abs=1e-4)
    assert stored["covid19_auroc"].value == pytest.approx(0.92857, abs=1e-4)
    assert stored["ece"].value == pytest.approx(0.08981, abs=1e-4)
    # No confusion matrix stored: the specificity comes from the card's point, marked so.
    assert stored["covid19_specificity"].value == 0.9
    assert "validation" in stored["covid19_specificity"].where
    assert "covid19_npv" not in stored
    assert study.test_counts == {"covid19": 61, "normal": 93, "pneumonia": 47}


@pytest.mark.slow
def test_only_this_sites_confirmed_images_with_this_versions_newest_prediction_count(
    site_a, site_b, clinician_a, clinician_b, evaluated, study_set, labelled
):
    other_version = ModelVersionFactory(name="other")
    labelled(clinician_b, evaluated, [("covid19", (0.1, 0.1, 0.8))] * 3)  # another site
    labelled(clinician_a, other_version, [("normal", (0.9, 0.05, 0.05))])  # another model
    labelled(clinician_a, evaluated, [("unusable", (0.9, 0.05, 0.05))])  # not a class
    (deleted,) = labelled(clinician_a, evaluated, [("normal", (0.9, 0.05, 0.05))])
    from django.utils import timezone

    deleted.image.case.deleted_at = timezone.now()
    deleted.image.case.save()
    # A newer finished prediction of a study image replaces the older one in the study.
    first = study_set[0]
    PredictionFactory(
        image=first.image,
        model_version=evaluated,
        probabilities={"covid19": 0.3, "pneumonia": 0.1, "normal": 0.6},
    )
    images = services.site_images_with_final_labels(site_a, evaluated)
    assert len(images) == 10
    assert {i.image_id for i in images} == {p.image_id for p in study_set}
    newest = next(i for i in images if i.image_id == first.image_id)
    assert newest.probabilities["normal"] == 0.6
    study = services.validate(site=site_a, version=evaluated)
    assert study.validation.figures["covid19_sensitivity"].value == pytest.approx(2 / 4)
    assert services.validate(site=site_b, version=evaluated).validation.n == 3


def test_the_page_shows_the_figures_and_is_audited(
    client, site_a, evaluated, study_set, model_admin
):
    client.force_login(model_admin)
    response = client.get(reverse("sites:validation", args=[site_a.pk, evaluated.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    for name, value in BY_HAND.items():
        row = re.search(rf'<tr data-figure="{name}">(.*?)</tr>', page, re.S)
        assert row is not None, name
        site_cell = re.search(r'data-site><span data-value="([0-9.]+)"', row[1])
        assert site_cell is not None, name
        assert float(site_cell[1]) == pytest.approx(value, abs=1e-4), name
    sensitivity = re.search(r'<tr data-figure="covid19_sensitivity">(.*?)</tr>', page, re.S)
    assert sensitivity is not None
    assert "0.852" in sensitivity[1]  # the test split beside it
    assert "data-too-wide" in sensitivity[1]
    assert "data-warnings" in page
    assert reverse("sites:reliability", args=[site_a.pk, evaluated.pk]) in page
    event = AuditEvent.objects.get(action="site.validation_viewed")
    assert event.actor == model_admin
    assert event.target_id == str(site_a.pk)
    assert event.after["format"] == "page"
    assert event.after["images"] == 10
    assert event.after["model_version"] == evaluated.pk


def test_the_csv_holds_every_figure_with_its_interval_and_the_test_split(
    client, site_a, evaluated, study_set, model_admin
):
    client.force_login(model_admin)
    response = client.get(reverse("sites:validation-csv", args=[site_a.pk, evaluated.pk]))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    figures = {r["name"]: r for r in rows if r["section"] == "figure"}
    for name, value in BY_HAND.items():
        assert float(figures[name]["value"]) == pytest.approx(value, abs=1e-4), name
        assert figures[name]["ci_low"], name
        assert figures[name]["ci_high"], name
    assert float(figures["covid19_sensitivity"]["test_split_value"]) == pytest.approx(
        0.8525, abs=1e-4
    )
    assert figures["covid19_sensitivity"]["too_wide"] == "1"
    recall = {r["name"]: float(r["value"]) for r in rows if r["section"] == "recall"}
    assert recall == pytest.approx(RECALL_BY_HAND, abs=1e-4)
    counts = {r["name"]: int(r["value"]) for r in rows if r["section"] == "count"}
    assert counts == {"covid19": 4, "pneumonia": 3, "normal": 3}
    assert len([r for r in rows if r["section"] == "reliability"]) == 4
    assert AuditEvent.objects.get(action="site.validation_viewed").after["format"] == "csv"


def test_the_api_answers_the_same_figures(api_client_of, site_a, evaluated, study_set, model_admin):
    response = api_client_of(model_admin).get(
        f"/api/v1/sites/{site_a.pk}/models/{evaluated.pk}/validation/"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["site"]["slug"] == "hospital-a"
    assert body["validation"]["n"] == 10
    for name, value in BY_HAND.items():
        assert body["validation"]["figures"][name]["value"] == pytest.approx(value, abs=1e-4)
    assert body["test_split"]["figures"]["accuracy"]["value"] == pytest.approx(0.806, abs=1e-3)
    assert body["validation"]["warnings"]
    assert body["at_site_point"] is None
    assert AuditEvent.objects.get(action="site.validation_viewed").after["format"] == "api"


@pytest.mark.slow
def test_the_reliability_plot_is_an_svg(client, site_a, evaluated, study_set, model_admin):
    client.force_login(model_admin)
    response = client.get(reverse("sites:reliability", args=[site_a.pk, evaluated.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert response.content.lstrip().startswith(b"<?xml")
    assert b"<svg" in response.content


def test_a_site_without_labelled_images_is_told_so_and_nothing_is_audited(
    client, api_client_of, site_b, evaluated, model_admin, clinician_b, labelled
):
    # A labelled image without a prediction by this version is counted, not measured.
    labelled(clinician_b, ModelVersionFactory(name="elsewhere"), [("normal", (0.1, 0.1, 0.8))])
    client.force_login(model_admin)
    page = client.get(reverse("sites:validation", args=[site_b.pk, evaluated.pk]))
    assert page.status_code == 409
    text = page.content.decode()
    assert "Hospital B has no image with a confirmed label" in text
    assert "1 labelled image there has no prediction by this version" in text
    csv_answer = client.get(reverse("sites:validation-csv", args=[site_b.pk, evaluated.pk]))
    assert csv_answer.status_code == 409
    api = api_client_of(model_admin).get(
        f"/api/v1/sites/{site_b.pk}/models/{evaluated.pk}/validation/"
    )
    assert api.status_code == 409
    assert "no image with a confirmed label" in api.json()["error"]["message"]
    assert not AuditEvent.objects.filter(action="site.validation_viewed").exists()


@pytest.mark.slow
def test_with_a_site_point_applied_the_figures_at_it_stand_beside(
    client, site_a, evaluated, study_set, model_admin
):
    point = SiteOperatingPoint.objects.create(
        site=site_a,
        model_version=evaluated,
        number=1,
        offsets={"covid19": 0.0, "pneumonia": 0.0, "normal": -2.0},
        target="covid19_sensitivity",
        goal=0.9,
        reached=True,
        n_images=10,
        active=True,
    )
    study = services.validate(site=site_a, version=evaluated)
    assert study.point == point
    assert study.at_site_point is not None
    # normal -2: c4 (0.2 vs 0.7 e^-2 = 0.095) becomes COVID-19; every COVID-19 image is found.
    assert study.at_site_point.figures["covid19_sensitivity"].value == 1.0
    # The probabilities' own figures do not move with the point.
    assert study.validation.figures["covid19_sensitivity"].value == 0.75
    client.force_login(model_admin)
    page = client.get(reverse("sites:validation", args=[site_a.pk, evaluated.pk])).content
    assert b"At the site&#x27;s point" in page or b"At the site's point" in page

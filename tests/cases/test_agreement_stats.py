"""The reader agreement page and its CSV: numbers checked against scikit-learn and
statsmodels computed here independently, intervals that hold their estimate."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from django.urls import reverse
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from apps.cases import agreement
from apps.cases.agreement import Estimate
from apps.cases.models import Adjudication, ExpertLabel
from tests.factories import CaseImageFactory, PredictionFactory, UserFactory

pytestmark = pytest.mark.django_db

# Twelve images read by three readers (a, b, c); the model's answer; the adjudicated
# label where there is one.
READINGS = [
    # a            b            c            model        adjudicated
    ("normal", "normal", "normal", "normal", None),
    ("normal", "normal", "pneumonia", "normal", "normal"),
    ("covid19", "covid19", "covid19", "covid19", None),
    ("covid19", "pneumonia", "covid19", "pneumonia", "covid19"),
    ("pneumonia", "pneumonia", "pneumonia", "pneumonia", None),
    ("pneumonia", "normal", "normal", "normal", "normal"),
    ("unusable", "unusable", "normal", "normal", "unusable"),
    ("normal", "normal", "normal", "pneumonia", None),
    ("covid19", "covid19", "pneumonia", "covid19", "covid19"),
    ("pneumonia", "pneumonia", "covid19", "pneumonia", "pneumonia"),
    ("normal", "pneumonia", "normal", "normal", "normal"),
    ("covid19", "covid19", "covid19", "normal", None),
]
READERS = ("reader-a", "reader-b", "reader-c")


@pytest.fixture
def study():
    readers = [UserFactory(username=name, roles=["annotator"]) for name in READERS]
    adjudicator = UserFactory(username="senior", roles=["adjudicator"])
    image = CaseImageFactory()  # one stored file, shared by the rows below
    for row in READINGS:
        *verdicts, model, adjudicated = row
        copy = CaseImageFactory(case=image.case, file=image.file.name, sha256=image.sha256)
        probabilities = {"covid19": 0.1, "pneumonia": 0.1, "normal": 0.1, model: 0.7}
        PredictionFactory(image=copy, probabilities=probabilities)
        for reader, label in zip(readers, verdicts, strict=True):
            ExpertLabel.objects.create(image=copy, annotator=reader, label=label)
        if adjudicated:
            Adjudication.objects.create(image=copy, adjudicator=adjudicator, label=adjudicated)
    # A fourth reader who read one image only: no Fleiss row of four readers.
    ExpertLabel.objects.create(
        image=copy, annotator=UserFactory(username="reader-d", roles=["annotator"]), label="covid19"
    )
    return readers


def _column(i: int) -> list[str | None]:
    return [row[i] for row in READINGS]


def _interval(estimate: Estimate) -> tuple[float, float, float]:
    """(low, value, high) of an estimate that has an interval."""
    assert estimate.low is not None
    assert estimate.value is not None
    assert estimate.high is not None
    return estimate.low, estimate.value, estimate.high


@pytest.mark.slow
def test_statistics_match_scikit_learn_and_statsmodels(study):
    stats = agreement.compute(resamples=300)
    pairs = {(p.reader_a, p.reader_b): p.comparison for p in stats.pairs}
    for (i, a), (j, b) in [((0, "reader-a"), (1, "reader-b")), ((0, "reader-a"), (2, "reader-c"))]:
        expected = cohen_kappa_score(_column(i), _column(j))
        comparison = pairs[(a, b)]
        assert comparison.n == 12
        assert comparison.kappa.value == pytest.approx(expected)
        low, value, high = _interval(comparison.kappa)
        assert low <= value <= high
        assert low >= -1
        assert high <= 1
        agreeing = np.mean(np.array(_column(i)) == np.array(_column(j)))
        assert comparison.agreement.value == pytest.approx(agreeing)
    assert pairs[("reader-c", "reader-d")].n == 1  # one shared image: no interval
    assert pairs[("reader-c", "reader-d")].kappa.low is None

    codes = {c: k for k, c in enumerate(agreement.CATEGORIES)}
    table, _ = aggregate_raters(
        np.array([[codes[x] for x in row[:3]] for row in READINGS]), n_cat=4
    )
    assert (stats.fleiss_images, stats.fleiss_readers) == (11, 3)  # the 4-reader image apart
    assert stats.fleiss.value == pytest.approx(fleiss_kappa(table[:-1]))
    low, value, high = _interval(stats.fleiss)
    assert low < value < high

    covid = next(c for c in stats.classes if c.label == "covid19")
    assert covid.readings == sum(row[:3].count("covid19") for row in READINGS) + 1
    assert covid.images_named == 5  # images with two or more readings, one of them COVID-19
    assert covid.images_unanimous == 2  # the last one with its fourth reading too

    rows = {r.reader: r for r in stats.readers}
    decided = [row for row in READINGS if row[4]]
    a_vs_adjudicated = rows["reader-a"].with_adjudicated
    assert a_vs_adjudicated.n == len(decided) == 7
    assert a_vs_adjudicated.agreement.value == pytest.approx(
        np.mean([row[0] == row[4] for row in decided])
    )
    assert a_vs_adjudicated.kappa.value == pytest.approx(
        cohen_kappa_score([r[0] for r in decided], [r[4] for r in decided])
    )
    usable = [row for row in READINGS if row[0] != "unusable"]
    a_vs_model = rows["reader-a"].with_model
    assert a_vs_model.n == 11  # the reader's "unusable" verdict is left out
    assert a_vs_model.kappa.value == pytest.approx(
        cohen_kappa_score([r[0] for r in usable], [r[3] for r in usable])
    )
    low, value, high = _interval(a_vs_model.agreement)
    assert low <= value <= high


@pytest.mark.slow
def test_the_same_data_gives_the_same_intervals(study):
    first, second = agreement.compute(resamples=200), agreement.compute(resamples=200)
    assert first.fleiss == second.fleiss
    assert [p.comparison for p in first.pairs] == [p.comparison for p in second.pairs]


@pytest.mark.slow
def test_model_admin_sees_the_page_and_downloads_the_csv(study, client, model_admin):
    client.force_login(model_admin)
    page = client.get(reverse("cases:agreement"))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-pair="reader-a|reader-b"' in html
    assert "Fleiss" in html
    response = client.get(reverse("cases:agreement-csv"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    kappa = next(
        r for r in rows if r["subject"] == "reader-a vs reader-b" and r["measure"] == "cohen_kappa"
    )
    assert float(kappa["estimate"]) == pytest.approx(
        cohen_kappa_score(_column(0), _column(1)), abs=1e-4
    )
    assert float(kappa["ci_low"]) <= float(kappa["estimate"]) <= float(kappa["ci_high"])
    overall = next(r for r in rows if r["measure"] == "fleiss_kappa")
    assert overall["n_images"] == "11"
    sections = {r["section"] for r in rows}
    assert sections == {
        "reader_pair",
        "overall",
        "class",
        "reader_vs_adjudicated",
        "reader_vs_model",
    }


def test_only_model_admins_open_the_statistics(client):
    for role in ("annotator", "adjudicator", "clinician"):
        client.force_login(UserFactory(roles=[role]))
        assert client.get(reverse("cases:agreement")).status_code == 403
        assert client.get(reverse("cases:agreement-csv")).status_code == 403


def test_page_without_verdicts_says_so(client, model_admin):
    client.force_login(model_admin)
    assert "No verdicts yet" in client.get(reverse("cases:agreement")).content.decode()
    rows = list(
        csv.reader(io.StringIO(client.get(reverse("cases:agreement-csv")).content.decode()))
    )
    assert rows[0][:3] == ["section", "subject", "measure"]


@pytest.mark.slow
def test_cached_statistics_follow_a_revised_verdict(study):
    from apps.cases import labelling

    before = agreement.current()
    assert agreement.current().pairs == before.pairs  # served from the cache
    image = ExpertLabel.objects.filter(annotator__username="reader-b").order_by("image_id").first()
    assert image is not None
    labelling.submit_label(image=image.image, annotator=image.annotator, label="covid19")
    after = agreement.current()
    assert after.pairs != before.pairs
    assert after.pairs == agreement.compute().pairs

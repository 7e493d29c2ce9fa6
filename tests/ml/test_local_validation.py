"""The local validation study's figures against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from ml.models.local_validation import local_validation, propose_site_point

CLASSES = ["covid19", "normal", "pneumonia"]


def _labelled() -> tuple[list[str], np.ndarray]:
    """Ten images: 4 COVID-19 (3 called COVID-19), 4 normal (2 called normal, 1 COVID-19,
    1 pneumonia), 2 pneumonia (both called pneumonia)."""
    rows = [
        ("covid19", [0.8, 0.1, 0.1]),
        ("covid19", [0.7, 0.2, 0.1]),
        ("covid19", [0.6, 0.3, 0.1]),
        ("covid19", [0.2, 0.7, 0.1]),
        ("normal", [0.1, 0.8, 0.1]),
        ("normal", [0.2, 0.6, 0.2]),
        ("normal", [0.5, 0.4, 0.1]),
        ("normal", [0.1, 0.4, 0.5]),
        ("pneumonia", [0.1, 0.1, 0.8]),
        ("pneumonia", [0.2, 0.2, 0.6]),
    ]
    return [y for y, _ in rows], np.asarray([p for _, p in rows])


def test_figures_equal_hand_computed_values():
    y, probs = _labelled()
    result = local_validation(y, probs, CLASSES, n_bootstrap=200)
    fig = result.figures
    assert result.counts == {"covid19": 4, "normal": 4, "pneumonia": 2}
    assert fig["covid19_sensitivity"].value == pytest.approx(3 / 4)
    assert fig["covid19_sensitivity"].n == 4
    # Without COVID-19: 6 images, one (a normal) called COVID-19.
    assert fig["covid19_specificity"].value == pytest.approx(5 / 6, abs=1e-4)
    # Called COVID-19: 4 images, 3 of them COVID-19.
    assert fig["covid19_ppv"].value == pytest.approx(3 / 4)
    # Not called COVID-19: 6 images, 1 of them COVID-19.
    assert fig["covid19_npv"].value == pytest.approx(5 / 6, abs=1e-4)
    assert fig["normal_called_normal"].value == pytest.approx(2 / 4)
    assert fig["accuracy"].value == pytest.approx(7 / 10)
    assert result.recall["pneumonia"].value == pytest.approx(1.0)
    # AUROC of p(COVID-19), COVID-19 vs the rest: pairs ranked right / all pairs.
    covid_scores = probs[:4, 0]
    rest_scores = probs[4:, 0]
    pairs = [(c > r) + 0.5 * (c == r) for c in covid_scores for r in rest_scores]
    assert fig["covid19_auroc"].value == pytest.approx(np.mean(pairs), abs=1e-4)
    low, high = fig["covid19_sensitivity"].low, fig["covid19_sensitivity"].high
    assert low is not None
    assert high is not None
    assert low <= 0.75 <= high


def test_a_small_set_is_flagged_too_wide_with_how_many_more():
    y, probs = _labelled()
    result = local_validation(y, probs, CLASSES, n_bootstrap=200)
    sensitivity = result.figures["covid19_sensitivity"]
    assert sensitivity.too_wide
    width = sensitivity.width
    assert width is not None
    assert sensitivity.more_needed == pytest.approx(4 * (width / 0.2) ** 2 - 4, abs=1.5)
    assert any("COVID-19 sensitivity" in line and "more" in line for line in result.warnings)


def test_a_large_clear_set_is_decided():
    rng = np.random.default_rng(1)
    y = ["covid19"] * 400 + ["normal"] * 400
    probs = np.asarray(
        [[0.9, 0.05, 0.05]] * 380 + [[0.1, 0.85, 0.05]] * 20 + [[0.05, 0.9, 0.05]] * 400
    )
    probs = probs + rng.uniform(0, 1e-3, probs.shape)
    probs = probs / probs.sum(axis=1, keepdims=True)
    result = local_validation(y, probs, CLASSES, n_bootstrap=200)
    assert not result.figures["covid19_sensitivity"].too_wide
    assert result.figures["covid19_sensitivity"].value == pytest.approx(0.95)


def test_offsets_change_the_labels():
    y, probs = _labelled()
    # A large normal offset calls every image normal.
    result = local_validation(y, probs, CLASSES, offsets={"normal": 5.0}, n_bootstrap=0)
    assert result.figures["normal_called_normal"].value == 1.0
    assert result.figures["covid19_sensitivity"].value == 0.0


def test_a_proposed_point_reaches_its_target_on_the_sites_labels():
    y, probs = _labelled()
    before = local_validation(y, probs, CLASSES, n_bootstrap=0).figures["normal_called_normal"]
    proposal = propose_site_point(
        y, probs, CLASSES, target="normal_called_normal", goal=0.75, n_bootstrap=100
    )
    assert before.value == 0.5
    assert proposal.reached
    assert proposal.figure.value is not None
    assert proposal.figure.value >= 0.75
    assert proposal.offsets["covid19"] == 0.0


def test_bad_input_is_refused_with_a_clear_error():
    y, probs = _labelled()
    with pytest.raises(ValueError, match="outside the model's classes"):
        local_validation([*y[:-1], "tuberculosis"], probs, CLASSES)
    with pytest.raises(ValueError, match="probs must be"):
        local_validation(y, probs[:5], CLASSES)
    with pytest.raises(ValueError, match="unknown target"):
        propose_site_point(y, probs, CLASSES, target="luck", goal=0.9)
    with pytest.raises(ValueError, match="no labelled"):
        propose_site_point(["normal"] * 10, probs, CLASSES, target="covid19_sensitivity", goal=0.9)


def test_a_perfect_share_on_few_images_is_not_read_as_decided():
    """Six normals all called normal: the percentile bootstrap would say 1.00-1.00."""
    y = ["normal"] * 6 + ["covid19"] * 6
    probs = np.asarray([[0.1, 0.8, 0.1]] * 6 + [[0.8, 0.1, 0.1]] * 6)
    normals = local_validation(y, probs, CLASSES, n_bootstrap=200).figures["normal_called_normal"]
    assert normals.value == 1.0
    assert normals.low == pytest.approx(0.6097, abs=1e-3)  # Wilson, 6 of 6
    assert normals.high == 1.0
    assert normals.too_wide
    assert normals.more_needed > 0


def test_the_rank_auroc_is_scikit_learns_with_ties():
    from sklearn.metrics import roc_auc_score

    from ml.models.local_validation import _auroc

    rng = np.random.default_rng(3)
    for _ in range(20):
        positive = rng.random(40) < 0.3
        score = np.round(rng.random(40), 1)  # many ties
        if positive.all() or not positive.any():
            continue
        assert _auroc(positive, score) == pytest.approx(roc_auc_score(positive, score))
    assert _auroc(np.ones(3, dtype=bool), np.arange(3.0)) is None

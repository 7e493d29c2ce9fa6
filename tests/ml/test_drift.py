"""Drift figures: a shifted sample drifts, a sample from the same distribution does not."""

from __future__ import annotations

import numpy as np
import pytest

from ml.models.drift import compare, image_features, psi, psi_categorical


def test_the_same_distribution_shows_no_drift_and_a_shift_does():
    rng = np.random.default_rng(0)
    reference = {"lung_mean": list(rng.normal(0.5, 0.1, 500))}
    same = compare(reference, {"lung_mean": list(rng.normal(0.5, 0.1, 200))})["lung_mean"]
    shifted = compare(reference, {"lung_mean": list(rng.normal(0.65, 0.1, 200))})["lung_mean"]
    assert same.level == "none"
    assert shifted.level == "drift"
    assert shifted.psi is not None
    assert shifted.psi > 0.25
    assert shifted.p_value is not None
    assert shifted.p_value < 1e-6


def test_too_few_recent_values_are_not_judged():
    reference = {"confidence": [0.5] * 100}
    result = compare(reference, {"confidence": [0.9] * 5})["confidence"]
    assert result.level == "too few"
    assert result.psi is None


def test_class_shares_drift_when_the_mix_changes():
    reference = ["normal"] * 60 + ["covid19"] * 20 + ["pneumonia"] * 20
    assert psi_categorical(reference, list(reference)) == pytest.approx(0.0)
    assert psi_categorical(reference, ["covid19"] * 70 + ["normal"] * 30) > 0.25


def test_psi_is_zero_for_identical_samples():
    values = list(np.linspace(0, 1, 300))
    assert psi(values, values) == pytest.approx(0.0, abs=1e-9)


def test_image_features_are_measured_inside_the_lungs():
    gray = np.zeros((10, 10))
    gray[:, :5] = 0.8
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[:, :5] = 255
    features = image_features(gray, mask)
    assert features == {"lung_area": 0.5, "lung_mean": 0.8, "lung_std": 0.0}
    assert image_features(gray, None)["lung_mean"] is None
    with pytest.raises(ValueError, match="differ in shape"):
        image_features(gray, mask[:5])


def test_the_bundled_models_reference_covers_every_feature():
    import json
    from pathlib import Path

    from ml.models.drift import FEATURES

    path = Path(__file__).resolve().parents[2] / "ml/bundled/cxr-lite0/drift-reference.json"
    reference = json.loads(path.read_text())
    card = json.loads((path.parent / "cxr-lite0.card.json").read_text())
    assert reference["model_sha256"] == card["sha256"]
    assert set(reference["features"]) == set(FEATURES)
    assert all(len(values) >= 200 for values in reference["features"].values())

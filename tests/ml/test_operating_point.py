"""The operating point: logit offsets chosen on validation labels, written into the model."""

import numpy as np
import pytest

from ml.data.labels import CLASSES
from ml.models.architectures import build_compact_cnn
from ml.models.operating_point import OperatingPoint, apply_offsets, choose_offsets


def _under_called_first_class():
    """Class 0 is ranked right but always loses the argmax to class 1 by a small margin."""
    y = np.array([0] * 20 + [1] * 20 + [2] * 20)
    probs = np.empty((60, 3))
    probs[:20] = [0.40, 0.45, 0.15]  # true class 0, argmax says 1
    probs[20:40] = [0.10, 0.80, 0.10]
    probs[40:] = [0.05, 0.15, 0.80]
    return probs, y


def test_offsets_recover_an_under_called_class():
    probs, y = _under_called_first_class()
    point = choose_offsets(probs, y, CLASSES)
    assert point.val_macro_f1_before == pytest.approx((0 + 2 / 3 + 1) / 3)  # 0 never predicted
    assert point.val_macro_f1_after == pytest.approx(1.0)
    # Class 0 is fixed at 0, so class 1 must come down relative to it; class 2 may stay.
    assert point.offsets["covid19"] == 0.0
    assert point.offsets["pneumonia"] < 0
    assert point.offsets["normal"] == 0.0  # ties go to the smallest offsets


def test_offsets_stay_zero_when_argmax_is_already_best():
    y = np.array([0, 1, 2] * 10)
    probs = np.eye(3)[y] * 0.8 + 0.2 / 3
    point = choose_offsets(probs, y, CLASSES)
    assert point.offsets == {"covid19": 0.0, "pneumonia": 0.0, "normal": 0.0}
    assert point.val_macro_f1_before == point.val_macro_f1_after == 1.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"probs must be \(n, 3\)"):
        choose_offsets(np.ones((4, 2)), np.zeros(4), CLASSES)
    with pytest.raises(ValueError, match="no validation images"):
        choose_offsets(np.ones((0, 3)), np.zeros(0), CLASSES)


def test_applied_offsets_shift_the_saved_models_log_probabilities():
    model = build_compact_cnn(input_size=32, width=4)
    x = np.random.default_rng(0).uniform(size=(5, 32, 32, 1)).astype(np.float32)
    before = np.asarray(model(x, training=False))
    offsets = {"covid19": 0.0, "pneumonia": -0.75, "normal": 0.5}
    apply_offsets(model, OperatingPoint(offsets, 0.5, 0.6), CLASSES)
    after = np.asarray(model(x, training=False))
    expected = np.log(before) + np.array([0.0, -0.75, 0.5])
    expected = np.exp(expected) / np.exp(expected).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-6)


def _normals_called_abnormal():
    """Normals whose p(normal) sits just under the abnormal classes': macro-F1 is already
    fair, but a fifth of the normals are called pneumonia and some non-COVID COVID-19."""
    y = np.array([0] * 30 + [1] * 30 + [2] * 40)
    probs = np.empty((100, 3))
    probs[:30] = [0.7, 0.2, 0.1]
    probs[30:60] = [0.15, 0.7, 0.15]
    probs[60:90] = [0.05, 0.15, 0.80]
    probs[90:] = [0.45, 0.1, 0.45 - 1e-3]  # normals that lose to COVID-19 by a hair
    return probs, y


@pytest.mark.slow
def test_the_specificity_rule_reaches_both_targets_on_validation():
    from ml.models.operating_point import choose_specificity_offsets, decision_figures

    probs, y = _normals_called_abnormal()
    assert decision_figures(probs.argmax(1), y, CLASSES)["normal_specificity"] == 0.75
    point = choose_specificity_offsets(probs, y, CLASSES, normal_specificity=0.9)
    assert point.reached is not None
    assert point.method == "val-specificity"
    assert point.offsets["normal"] > 0
    assert point.reached["normal_specificity"] >= 0.9
    assert point.reached["covid19_specificity"] >= 0.9
    moved = np.log(probs) + np.array([point.offsets[c] for c in CLASSES])
    assert decision_figures(moved.argmax(1), y, CLASSES) == point.reached
    data = point.to_dict()
    assert data["targets"] == {"normal_specificity": 0.9, "covid19_specificity": 0.9}
    assert OperatingPoint.from_dict(data).offsets == point.offsets


@pytest.mark.slow
def test_the_specificity_rule_says_so_when_a_target_cannot_be_reached():
    from ml.models.operating_point import choose_specificity_offsets

    y = np.array([0] * 10 + [2] * 10)
    probs = np.tile([0.5, 0.5, 0.0], (20, 1))  # the model never gives normals a chance
    point = choose_specificity_offsets(probs, y, CLASSES)
    assert point.reached is not None
    # No offset on the grid calls a normal normal: the point says what it reached.
    assert point.reached["normal_specificity"] == 0.0
    assert point.targets == {"normal_specificity": 0.9, "covid19_specificity": 0.9}
    with pytest.raises(ValueError, match="no validation normals"):
        choose_specificity_offsets(probs[:10], y[:10], CLASSES)


@pytest.mark.slow
def test_the_operating_curve_lists_the_chosen_point_and_the_roc():
    from ml.models.operating_point import choose_specificity_offsets, operating_curve

    probs, y = _normals_called_abnormal()
    point = choose_specificity_offsets(probs, y, CLASSES)
    assert point.reached is not None
    curve = operating_curve(probs, y, CLASSES, point)
    chosen = [row for row in curve["rows"] if row["chosen"]]
    assert len(chosen) == 1
    assert chosen[0]["normal_specificity"] == pytest.approx(point.reached["normal_specificity"])
    specificities = [row["normal_specificity"] for row in curve["rows"]]
    assert specificities == sorted(specificities)  # a larger normal offset calls more normal
    assert curve["n_normal"] == 40
    assert 0.5 < curve["roc"]["auroc"] <= 1.0
    assert curve["roc"]["fpr"][0] == 0.0
    assert curve["roc"]["tpr"][-1] == 1.0


def test_offset_change_moves_a_model_from_one_point_to_another():
    from ml.models.operating_point import offset_change

    old = OperatingPoint({"covid19": 0.0, "pneumonia": -0.5, "normal": 0.5}, 0.5, 0.6)
    new = OperatingPoint({"covid19": 0.0, "pneumonia": -0.5, "normal": 1.25}, 0.5, 0.6)
    assert offset_change(old, new).offsets == {"covid19": 0.0, "pneumonia": 0.0, "normal": 0.75}
    assert offset_change(None, new).offsets == new.offsets


def test_the_grid_searchs_macro_f1_is_scikit_learns():
    from sklearn.metrics import f1_score

    from ml.models.operating_point import _macro_f1

    rng = np.random.default_rng(5)
    for n in (1, 7, 60):
        y = rng.integers(0, 2, size=n)  # the third class never occurs in y
        scores = rng.normal(size=(n, 3))
        expected = f1_score(y, scores.argmax(1), labels=[0, 1, 2], average="macro", zero_division=0)
        assert _macro_f1(y, scores, 3) == pytest.approx(expected)

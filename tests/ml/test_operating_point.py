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

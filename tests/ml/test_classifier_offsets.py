"""Offsets applied after the model (ml.serving.classifier): a model moved to another
operating point post hoc answers as if the offsets were in its softmax bias."""

import json

import keras
import numpy as np
import pytest

from ml.data.labels import CLASSES
from ml.data.preprocess import open_image
from ml.models.architectures import build_compact_cnn
from ml.models.artifacts import card_path
from ml.models.operating_point import OperatingPoint, apply_offsets
from ml.serving.classifier import Classifier, shift_probabilities
from tests.conftest import IMAGES, REPO_ROOT, fixture_manifest

TINY = REPO_ROOT / "tests" / "fixtures" / "models" / "cxr-tiny.keras"
CARD = {"classes": list(CLASSES), "preprocessing": {"input_size": 32}}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _model_at(offsets: dict[str, float] | None, seed: int = 0) -> keras.Model:
    model = build_compact_cnn(input_size=32, width=4, seed=seed)
    if offsets:
        apply_offsets(model, OperatingPoint(offsets, 0.0, 0.0), CLASSES)
    return model


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).uniform(size=(6, 32, 32, 1)).astype(np.float32)


def test_shift_is_softmax_of_the_shifted_log_probabilities():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32)
    shifted = shift_probabilities(probs, np.array([0.0, -0.5, 1.0]))
    expected = _softmax(np.log(probs.astype(np.float64)) + np.array([0.0, -0.5, 1.0]))
    np.testing.assert_allclose(shifted, expected, rtol=1e-6)
    assert shifted.dtype == np.float32
    np.testing.assert_allclose(shifted.sum(axis=1), 1.0, rtol=1e-6)
    # Raising the third class's prior turns the first row's 0.1 into more than 0.2.
    assert shifted[0, 2] > 0.2
    np.testing.assert_allclose(shift_probabilities(probs, np.zeros(3)), probs, rtol=1e-6)


def test_shift_keeps_a_zero_probability_near_zero_and_refuses_wrong_shapes():
    shifted = shift_probabilities(np.array([[1.0, 0.0, 0.0]]), np.array([0.0, 5.0, 0.0]))
    assert shifted[0, 1] < 1e-100
    assert np.isfinite(shifted).all()
    with pytest.raises(ValueError, match="offsets of shape"):
        shift_probabilities(np.ones((2, 3)) / 3, np.zeros(2))


def test_offsets_after_the_model_equal_offsets_in_its_softmax_bias(batch):
    offsets = {"covid19": 0.0, "pneumonia": -0.75, "normal": 1.25}
    baked = np.asarray(_model_at(offsets)(batch, training=False))
    post_hoc = shift_probabilities(
        np.asarray(_model_at(None)(batch, training=False)), np.array([0.0, -0.75, 1.25])
    )
    np.testing.assert_allclose(post_hoc, baked, rtol=1e-4, atol=1e-6)


def test_a_model_at_the_cards_point_moved_by_offset_change_answers_as_the_chosen_point(batch):
    from ml.models.operating_point import offset_change

    card = OperatingPoint({"covid19": 0.0, "pneumonia": -0.25, "normal": 0.5}, 0.8, 0.82)
    chosen = OperatingPoint({"covid19": 0.0, "pneumonia": -0.25, "normal": -1.0}, 0.8, 0.8)
    served = Classifier(_model_at(card.offsets), CARD).with_offsets(
        offset_change(card, chosen).offsets
    )
    assert served.offsets == {"covid19": 0.0, "pneumonia": 0.0, "normal": -1.5}
    trained_there = np.asarray(_model_at(chosen.offsets)(batch, training=False))
    np.testing.assert_allclose(served.predict_array(batch), trained_there, rtol=1e-4, atol=1e-6)


def test_with_offsets_shares_the_loaded_model_and_reuses_its_views(batch):
    base = Classifier(_model_at(None), CARD)
    view = base.with_offsets({"normal": 2.0})
    assert view is not base
    assert view.model is base.model
    assert view._run is base._run
    assert base.offsets == {}
    assert view.offsets == {"covid19": 0.0, "pneumonia": 0.0, "normal": 2.0}
    assert base.with_offsets({"normal": 2.0}) is view
    assert view.with_offsets({"normal": 2.0}) is view  # offsets replace, never add up
    assert view.with_offsets(None) is base
    assert base.with_offsets({"covid19": 0.0, "pneumonia": 0.0, "normal": 0.0}) is base
    np.testing.assert_allclose(
        view.predict_array(batch),
        shift_probabilities(base.predict_array(batch), np.array([0.0, 0.0, 2.0])),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="unknown classes"):
        base.with_offsets({"tuberculosis": 1.0})
    with pytest.raises(ValueError, match="finite"):
        base.with_offsets({"normal": float("nan")})


@pytest.mark.parametrize("runtime", ["keras", "litert"])
@pytest.mark.slow
def test_predict_labels_the_shifted_argmax_on_both_runtimes(runtime):
    card = json.loads(card_path(TINY).read_text())
    if runtime == "keras":
        base = Classifier.load(TINY, expected_sha256=card["sha256"])
    else:
        base = Classifier.load_lite(
            TINY.with_suffix(".tflite"), card=card, source_sha256=card["sha256"]
        )
    flipped = 0
    for row in fixture_manifest()[:6]:
        image = open_image(IMAGES / row["path"])
        before = base.predict(image)
        # Push the decision away from whatever the model calls it.
        offsets = {c: (-30.0 if c == before.label else 0.0) for c in CLASSES}
        after = base.with_offsets(offsets).predict(image)
        probs = np.array([[before.probabilities[c] for c in CLASSES]])
        expected = shift_probabilities(probs, np.array([offsets[c] for c in CLASSES]))[0]
        for i, name in enumerate(CLASSES):
            assert after.probabilities[name] == pytest.approx(expected[i], abs=1e-6)
        assert after.label == CLASSES[int(np.argmax(expected))]
        flipped += after.label != before.label
    assert flipped == 6

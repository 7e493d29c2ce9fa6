"""Deconvolution (deconvnet, Zeiler & Fergus 2014) in ml.explain: the backward rule on a
model with a known answer, and how it differs from guided backprop on the bundled model."""

import numpy as np
import pytest

from ml.data.preprocess import open_image
from ml.explain.api import METHODS, deletion_insertion, explain, randomisation_check
from ml.explain.methods import deconvnet_map, guided_map
from ml.explain.sanity import spearman
from ml.serving.classifier import Classifier
from tests.conftest import IMAGES, fixture_manifest

BUNDLED = "ml/bundled/cxr-lungs/cxr-lungs.keras"


@pytest.fixture(scope="module")
def known_answer():
    """x -> conv 1x1 (kernel [+1, -1]) -> ReLU -> mean -> dense -> softmax, on an all-ones
    image: unit a is active (pre-activation +1), unit b inactive (-1). Class 0's logit is
    -1 * mean(a) + 2 * mean(b), so its backward signal is -1/4 into a and +2/4 into b per
    pixel: the plain gradient passes a's (-1/4 x +1), guided backprop passes nothing (a's
    signal is negative, b is inactive), the deconvnet passes b's (+2/4 x -1) because its
    rule rectifies the signal without looking at the forward activation."""
    import keras
    from keras import layers

    inputs = keras.Input((2, 2, 1))
    x = layers.Conv2D(2, 1, use_bias=False, name="conv")(inputs)
    x = layers.Activation("relu", name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(2, use_bias=False, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([np.array([1.0, -1.0], np.float32).reshape(1, 1, 1, 2)])
    model.get_layer("probs").set_weights([np.array([[-1.0, 1.0], [2.0, 0.0]], np.float32)])
    return model, np.ones((2, 2, 1), np.float32)


def test_deconvnet_rectifies_the_backward_signal_without_the_forward_mask(known_answer):
    import tensorflow as tf

    model, image = known_answer
    deconv, params, layer = deconvnet_map(model, image, 0)
    guided, _, _ = guided_map(model, image, 0)
    x = tf.constant(image[np.newaxis])
    with tf.GradientTape() as tape:
        tape.watch(x)
        pre_softmax = model.get_layer("probs").kernel[:, 0]
        features = model.get_layer("gap")(model.get_layer("relu")(model.get_layer("conv")(x)))
        logit = tf.reduce_sum(features * pre_softmax)
    plain = np.abs(tape.gradient(logit, x).numpy()[0]).sum(axis=-1)

    np.testing.assert_allclose(plain, 0.25)  # a's signal through the active unit
    np.testing.assert_allclose(guided, 0.0)  # masked twice: negative signal, inactive b
    np.testing.assert_allclose(deconv, 0.5)  # b's positive signal, though b was inactive
    assert params == {
        "score": "logit",
        "activations": "deconvnet",
        "reduce": "abs-sum-channels",
        "own_derivative": [],
    }
    assert layer is None


@pytest.fixture(scope="module")
def bundled():
    classifier = Classifier.load(BUNDLED)
    rows = fixture_manifest()[::6]  # three images from different sources
    images = [classifier.prepare(open_image(IMAGES / row["path"]))[0].x for row in rows]
    return classifier, images


@pytest.mark.slow
def test_deconvnet_is_a_method_of_its_own_and_differs_from_guided_backprop_on_the_bundled_model(
    bundled,
):
    classifier, images = bundled
    assert "deconvnet" in METHODS
    for x in images:
        deconv = explain(classifier.model, x, "deconvnet", classes=classifier.classes)
        guided = explain(classifier.model, x, "guided", classes=classifier.classes)
        assert deconv.target_class == guided.target_class
        assert deconv.values.shape == x.shape[:2]
        assert deconv.values.max() == pytest.approx(1.0)
        # Same model, same image, same class: only the backward rule differs, and the maps
        # disagree on where the evidence lies (guided vs guided would be 1.0).
        assert spearman(deconv.values, guided.values) < 0.95
        assert np.abs(deconv.values - guided.values).max() > 0.3
        # lung_cnn's lung gate (input-only clipped ReLUs) keeps its own derivative.
        assert deconv.params["own_derivative"] == ["lung_cells", "visible"]
        assert deconv.params["score"] == "logit"


@pytest.mark.slow
def test_deconvnet_through_the_lung_gate_would_show_the_gate(bundled, monkeypatch):
    """Why the gate is left out: with the rule applied to it too, the map is a few flat
    blocks (the gate's 8 x 8 cells times its x 1e4 input scale), not image detail."""
    import ml.explain.methods as methods
    from ml.explain._common import clear_cache

    classifier, images = bundled
    x = images[0]
    kept = explain(classifier.model, x, "deconvnet").values
    monkeypatch.setattr(methods, "_weight_free_layers", lambda model: set())
    clear_cache(classifier.model)
    try:
        through = explain(classifier.model, x, "deconvnet")
    finally:
        clear_cache(classifier.model)
    assert through.params["own_derivative"] == []
    # Share of the map's variance in its 8 x 8 cell means: 1.0 vs 0.35 on this image.
    assert _blockiness(through.values) > 0.95
    assert _blockiness(kept) < 0.6


def _blockiness(values: np.ndarray, cell: int = 8) -> float:
    """Share of a map's variance explained by its means over cell x cell blocks."""
    h, w = values.shape
    means = values.reshape(h // cell, cell, w // cell, cell).mean(axis=(1, 3))
    blocks = np.repeat(np.repeat(means, cell, axis=0), cell, axis=1)
    return float(1.0 - np.var(values - blocks) / np.var(values))


@pytest.mark.slow
def test_deconvnet_gets_faithfulness_scores_and_the_randomisation_check(bundled):
    classifier, images = bundled
    x = images[0]
    heatmap = explain(classifier.model, x, "deconvnet")
    scores = deletion_insertion(classifier.model, x, heatmap.values, heatmap.target_class)
    assert 0.0 <= scores["deletion_auc"] <= 1.0
    assert 0.0 <= scores["insertion_auc"] <= 1.0
    check = randomisation_check(classifier.model, images[:2], "deconvnet", mode="full")
    assert check["method"] == "deconvnet"
    assert check["params"]["activations"] == "deconvnet"
    assert -1.0 <= check["spearman_mean"] < 0.99  # the random model's map is another map
    assert -1.0 <= check["ssim_mean"] <= 1.0

"""ml.explain inspector API on the bundled compact CNN, the tiny fixture model and ad-hoc
Sequential / functional / nested models; the lung-field heuristic; the GIF re-export."""

from io import BytesIO
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from ml.data.preprocess import open_image, preprocess
from ml.explain.api import (
    GradCAMAnimation,
    activation_grid,
    activation_maps,
    conv_layers,
    filter_grid,
    grid_png,
    spatial_layers,
)
from ml.lungs.heuristic import dice, lung_fields, mass_outside, prior_mask
from ml.serving.classifier import Classifier
from tests.conftest import FIXTURES, IMAGES

BUNDLED = Path(__file__).resolve().parents[2] / "ml" / "bundled" / "cxr-compact.keras"


@pytest.fixture(scope="module")
def tiny():
    return Classifier.load(FIXTURES / "models" / "cxr-tiny.keras")


@pytest.fixture(scope="module")
def xray(tiny):
    return preprocess(open_image(IMAGES / "00001280_004.jpg"), tiny.spec)


def test_layers_of_the_compact_cnn_in_forward_order(tiny):
    assert conv_layers(tiny.model) == ["conv1", "conv2", "conv3", "last_conv"]
    spatial = spatial_layers(tiny.model)
    assert spatial[:4] == ["conv1", "bn1", "relu1", "pool1"]
    assert "gap" not in spatial
    assert "probs" not in spatial


def test_filter_grid_shows_one_tile_per_first_layer_kernel(tiny):
    width = tiny.model.get_layer("conv1").filters
    grid = filter_grid(tiny.model)
    columns = int(np.ceil(np.sqrt(width)))
    rows = int(np.ceil(width / columns))
    assert grid.shape == (rows * 4 - 1, columns * 4 - 1)  # 3x3 kernels + 1 px gaps
    assert grid.min() == 0.0
    assert grid.max() == 1.0
    picture = Image.open(BytesIO(grid_png(grid, scale=8)))
    assert picture.size == (grid.shape[1] * 8, grid.shape[0] * 8)


def test_bundled_model_filters_and_activations():
    bundled = Classifier.load(BUNDLED)
    assert conv_layers(bundled.model)[0] == "conv1"
    assert filter_grid(bundled.model).shape == (4 * 4 - 1, 4 * 4 - 1)  # 16 filters
    x = preprocess(open_image(IMAGES / "IM-0117-0001.jpeg"), bundled.spec)
    maps = activation_maps(bundled.model, x, "relu1")
    assert maps.shape == (128, 128, 16)
    assert maps.min() >= 0.0
    assert maps.max() > 0.0


def test_activation_maps_match_a_keras_feature_model(tiny, xray):
    maps = activation_maps(tiny.model, xray, "relu2")
    reference = keras.Model(tiny.model.inputs[0], tiny.model.get_layer("relu2").output)
    expected = reference(xray[np.newaxis], training=False)[0].numpy()
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    grid = activation_grid(maps, max_maps=9, order="strongest")
    assert grid.shape == (3 * 65 - 1, 3 * 65 - 1)
    png = grid_png(grid, scale=1, cmap="viridis")
    assert Image.open(BytesIO(png)).mode == "RGB"


def test_unknown_layer_names_the_choices(tiny, xray):
    with pytest.raises(ValueError, match="relu1"):
        activation_maps(tiny.model, xray, "nope")
    with pytest.raises(ValueError, match="4-D"):
        activation_maps(tiny.model, xray, "gap")


def test_adhoc_sequential_rgb_model():
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(6, 5, name="c1"),
            keras.layers.ReLU(name="r1"),
            keras.layers.Conv2D(4, 3, name="c2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    assert conv_layers(model) == ["c1", "c2"]
    assert spatial_layers(model) == ["c1", "r1", "c2"]
    grid = filter_grid(model)  # 6 colour 5x5 kernels: 3 columns x 2 rows
    assert grid.shape == (2 * 6 - 1, 3 * 6 - 1, 3)
    x = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    assert activation_maps(model, x, "r1").shape == (28, 28, 6)
    assert filter_grid(model, "c2").shape == (2 * 4 - 1, 2 * 4 - 1)  # mean over 6 inputs


def test_adhoc_functional_model_with_a_nested_backbone():
    inner = keras.Sequential(
        [keras.Input((16, 16, 1)), keras.layers.Conv2D(3, 3, name="ic")], name="backbone"
    )
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(2, 3, name="oc")(inner(inputs))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    assert conv_layers(model) == ["backbone/ic", "oc"]
    image = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16, 1)
    maps = activation_maps(model, image, "backbone/ic")
    expected = inner(image[np.newaxis])[0].numpy()
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    assert filter_grid(model).shape == (2 * 4 - 1, 2 * 4 - 1)


def test_gradcam_animation_is_exported_from_ml_explain():
    from ml.explain import animation as train_animation

    assert GradCAMAnimation is train_animation.GradCAMAnimation


def test_lung_fields_are_plausible_on_fixture_xrays(tiny):
    for name in ("00001280_004.jpg", "IM-0117-0001.jpeg", "2168a917.jpg"):
        x = preprocess(open_image(IMAGES / name), tiny.spec)
        lungs = lung_fields(x)
        assert lungs.method in {"threshold", "prior"}
        assert 0.08 <= lungs.area_fraction <= 0.60
        assert lungs.mask.shape == (128, 128)
        assert lungs.mask.dtype == bool


def test_lung_mass_and_dice():
    mask = prior_mask((64, 64), (0, 64, 0, 64))
    assert 0.2 < mask.mean() < 0.5
    assert mass_outside(mask.astype(float), mask) == 0.0
    assert mass_outside((~mask).astype(float), mask) == 1.0
    assert mass_outside(np.ones((64, 64)), mask) == pytest.approx(1 - mask.mean())
    assert dice(mask, mask) == 1.0
    assert dice(mask, ~mask) == 0.0

"""Occlusion's incremental path: the same maps as tf-explain's and as the full batch.

The incremental path (``ml.explain.occlusion``) recomputes only the feature-map cells a
patch can reach; these tests hold it to tf-explain's ``get_sensitivity_map`` on the
bundled model (every patch position, border patches included, several patch sizes and
fill values), to the full-batch path on architectures whose geometry is harder (strides,
'valid' padding, dilation, explicit padding and cropping, merges, max pooling with
'same' padding on odd sizes, non-square images) and checks that models it cannot
analyse take the full path. No timings here: see ``bench/explain.py``.
"""

import gc
import weakref

import keras
import numpy as np
import pytest
from keras import layers

from ml.data.preprocess import open_image, preprocess
from ml.explain._common import normalise_map
from ml.explain.api import fast_occlusion, tf_explain_occlusion
from ml.explain.occlusion import (
    default_fill_value,
    incremental_unsupported_reason,
    occlusion_path,
)
from ml.serving.classifier import Classifier
from tests.conftest import IMAGES, REPO_ROOT, fixture_manifest

BUNDLED = REPO_ROOT / "ml" / "bundled" / "cxr-compact.keras"
TOLERANCE = 1e-4  # max abs difference of the min-max normalised maps


def _normalised_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(normalise_map(a) - normalise_map(b)).max())


@pytest.fixture(scope="module")
def bundled():
    if not BUNDLED.is_file():
        pytest.skip("ml/bundled/cxr-compact.keras is not in this checkout")
    return Classifier.load(BUNDLED)


@pytest.fixture(scope="module")
def bundled_images(bundled):
    rows = fixture_manifest()[::6]  # one image per source and class mix, 3 images
    return [preprocess(open_image(IMAGES / row["path"]), bundled.spec) for row in rows]


def _fill(name: str, image: np.ndarray) -> float:
    return default_fill_value(image) if name == "mean" else float(name)


def test_bundled_model_takes_the_incremental_path(bundled):
    assert incremental_unsupported_reason(bundled.model) is None
    assert occlusion_path(bundled.model) == "incremental"
    for patch_size in (8, 12, 16, 32):
        assert occlusion_path(bundled.model, patch_size) == "incremental"
    # One patch over the whole image: nothing to save, the full path.
    assert occlusion_path(bundled.model, 128) == "full"


@pytest.mark.parametrize("patch_size", [8, 16, 32, 12])
@pytest.mark.parametrize("fill", ["0.0", "0.5", "mean"])
@pytest.mark.slow
def test_incremental_equals_tf_explain_on_the_bundled_model(
    bundled, bundled_images, patch_size, fill, record_property
):
    """Every image, every patch position (a 12 px grid leaves 8 px patches at the
    bottom and right borders); the class with the largest map range is compared."""
    differences = []
    for image in bundled_images:
        value = _fill(fill, image)
        target = int(np.argmax(bundled.predict_array(image[np.newaxis])[0]))
        fast = fast_occlusion(bundled.model, image, target, patch_size, value, path="incremental")
        reference = tf_explain_occlusion(bundled.model, image, target, patch_size, value)
        assert fast.shape == reference.shape == (128, 128)
        assert np.ptp(reference) > 1e-3  # a map worth comparing
        # Raw values too: the same probabilities, not only the same shape of map.
        assert np.abs(fast - reference).max() <= 1e-6
        differences.append(_normalised_difference(fast, reference))
    record_property("max_abs_diff_normalised", max(differences))
    print(f"patch {patch_size} fill {fill}: max abs diff (normalised) {max(differences):.2e}")
    assert max(differences) <= TOLERANCE


@pytest.mark.slow
def test_border_patches_match_one_by_one(bundled, bundled_images):
    """The coarse grid itself at the corners and edges, before any resize."""
    image = bundled_images[0]
    patch_size = 12  # 11 x 11 grid, the last row and column 8 px wide
    fast = fast_occlusion(bundled.model, image, 0, patch_size, 0.0, path="incremental")
    full = fast_occlusion(bundled.model, image, 0, patch_size, 0.0, path="full")
    np.testing.assert_allclose(fast, full, atol=1e-6, rtol=0)
    # Occluding the corner patch by hand gives the corner value of the map's grid.
    corner = image.copy()
    corner[120:, 120:] = 0.0
    p = bundled.predict_array(corner[np.newaxis])[0, 0]
    grid = _coarse(bundled.model, image, 0, patch_size, 0.0)
    assert grid[-1, -1] == pytest.approx(1.0 - p, abs=1e-6)
    corner = image.copy()
    corner[:12, 120:] = 0.0
    assert grid[0, -1] == pytest.approx(
        1.0 - bundled.predict_array(corner[np.newaxis])[0, 0], abs=1e-6
    )


def _coarse(model, image, target, patch_size, fill):
    """The occlusion grid before resizing, from the incremental path's own outputs."""
    from ml.explain.occlusion import _incremental_forward, _plan

    plan = _plan(model, image.shape, patch_size)
    assert not isinstance(plan, str), plan  # a reason the model takes the full path
    outputs = _incremental_forward(model, plan, image, fill, None)[:, target]
    rows = -(-image.shape[0] // patch_size)
    return (1.0 - outputs).reshape(rows, -1)


@pytest.mark.slow
def test_batch_size_splits_the_patches(bundled, bundled_images):
    image = bundled_images[1]
    whole = fast_occlusion(bundled.model, image, 2, 16, 0.5, path="incremental")
    split = fast_occlusion(bundled.model, image, 2, 16, 0.5, path="incremental", batch_size=10)
    np.testing.assert_allclose(whole, split, atol=1e-7, rtol=0)


# --- other geometries: the incremental path against the full batch ---------------------


def _finish(inputs, x, pool="avg", name="model", softmax_layer=False, sharpen=8.0):
    x = layers.GlobalAveragePooling2D()(x) if pool == "avg" else layers.GlobalMaxPooling2D()(x)
    if softmax_layer:
        outputs = layers.Softmax()(layers.Dense(3, name="logits")(x))
    else:
        outputs = layers.Dense(3, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name=name)
    # Sharper outputs than the initial weights give, so maps have a usable range.
    kernel, bias = model.get_layer("logits" if softmax_layer else "probs").get_weights()
    model.get_layer("logits" if softmax_layer else "probs").set_weights([kernel * sharpen, bias])
    return model


def _strided_model():
    """Stride-2 convolutions on odd sizes ('same' padding then pads unevenly), a strided
    depthwise convolution, a dilated convolution, BN + ReLU."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((61, 61, 1))
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(16, 4, strides=2, padding="same", activation="elu")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = layers.Conv2D(16, 3, dilation_rate=2, padding="same", activation="relu")(x)
    return _finish(inputs, x, name="strided")


def _valid_model():
    """'valid' convolutions and pooling with overlapping windows, a separable
    convolution, a 'same' max pool on an odd size (padding that must act as -inf) and
    global max pooling."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((64, 64, 1))
    x = layers.Conv2D(8, 3, padding="valid", activation="relu")(inputs)  # 62
    x = layers.MaxPooling2D(3, strides=2, padding="valid")(x)  # 30
    x = layers.Conv2D(16, 3, padding="valid")(x)  # 28
    x = layers.AveragePooling2D(2)(x)  # 14
    x = layers.SeparableConv2D(16, 3, padding="valid", activation="swish")(x)  # 12
    x = layers.Conv2D(16, 3, strides=2, padding="valid", activation="tanh")(x)  # 5
    x = layers.MaxPooling2D(2, strides=2, padding="same")(x)  # 3, padded at the end
    return _finish(inputs, x, pool="max", name="valid")


def _merging_model():
    """Explicit zero padding, a 7x7 stride-2 'valid' stem, branches merged by
    concatenation and addition, cropping, LayerNorm + GELU, a separate Softmax layer."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((48, 64, 1))  # not square
    x = layers.ZeroPadding2D(3)(inputs)
    x = layers.Conv2D(8, 7, strides=2, padding="valid", activation="relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    a = layers.Conv2D(8, 1)(x)
    b = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = layers.Concatenate()([a, b])
    shortcut = layers.Conv2D(16, 1, strides=2)(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same")(x)
    x = layers.Add()([x, shortcut])
    x = layers.Cropping2D(((1, 0), (0, 2)))(x)
    x = layers.LayerNormalization()(x)
    x = layers.Activation("gelu")(x)
    return _finish(inputs, x, name="merging", softmax_layer=True, sharpen=1.0)


GEOMETRIES = {"strided": _strided_model, "valid": _valid_model, "merging": _merging_model}


@pytest.fixture(scope="module", params=sorted(GEOMETRIES))
def geometry(request):
    model = GEOMETRIES[request.param]()
    rng = np.random.default_rng(7)
    image = rng.random(tuple(model.inputs[0].shape[1:]), dtype=np.float32)
    image[: image.shape[0] // 2] *= 0.5  # some structure for the patches to remove
    return request.param, model, image


@pytest.mark.parametrize("patch_size", [5, 8, 13])
@pytest.mark.slow
def test_incremental_equals_full_batch_on_other_geometries(geometry, patch_size, record_property):
    name, model, image = geometry
    assert incremental_unsupported_reason(model) is None, name
    height, width = image.shape[:2]
    target = int(np.argmax(model.predict(image[np.newaxis], verbose=0)[0]))
    fill = default_fill_value(image)
    fast = fast_occlusion(model, image, target, patch_size, fill, path="incremental")
    full = fast_occlusion(model, image, target, patch_size, fill, path="full")
    assert fast.shape == full.shape == (height, width)
    assert np.ptp(full) > 1e-4
    assert np.abs(fast - full).max() <= 1e-6
    difference = _normalised_difference(fast, full)
    record_property("max_abs_diff_normalised", difference)
    assert difference <= TOLERANCE
    if height == width:  # tf-explain's grid is only right for square images
        reference = tf_explain_occlusion(model, image, target, patch_size, fill)
        assert _normalised_difference(fast, reference) <= TOLERANCE


@pytest.mark.slow
def test_the_other_architecture_of_the_main_tests_is_incremental():
    """Residual block of separable and depthwise convolutions, LeakyReLU, strided ELU
    stem, LayerNorm + GELU, global max pooling (``test_explain.other_architecture``)."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((64, 64, 1))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="elu")(inputs)
    shortcut = x
    x = layers.SeparableConv2D(8, 3, padding="same", activation="swish")(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.LeakyReLU(negative_slope=0.1)(x)
    x = layers.Add()([x, shortcut])
    x = layers.MaxPooling2D()(x)
    x = layers.SeparableConv2D(16, 3, padding="same")(x)
    x = layers.LayerNormalization()(x)
    x = layers.Activation("gelu")(x)
    model = _finish(inputs, x, pool="max", softmax_layer=True)
    image = np.random.default_rng(1).random((64, 64, 1), dtype=np.float32)
    assert occlusion_path(model, 8) == "incremental"
    fast = fast_occlusion(model, image, 0, 8, 0.25)
    reference = tf_explain_occlusion(model, image, 0, 8, 0.25)
    assert _normalised_difference(fast, reference) <= TOLERANCE


@pytest.mark.slow
def test_sequential_models_are_analysed_too():
    keras.utils.set_random_seed(6)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            layers.Conv2D(4, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(8, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(2, activation="softmax"),
        ]
    )
    image = np.random.default_rng(6).random((32, 32, 1), dtype=np.float32)
    assert occlusion_path(model, 4) == "incremental"
    fast = fast_occlusion(model, image, 1, 4, 0.0, path="incremental")
    full = fast_occlusion(model, image, 1, 4, 0.0, path="full")
    assert np.abs(fast - full).max() <= 1e-6


# --- models the analysis does not cover: the full path, still the right map ------------


def _flatten_head():
    inputs = keras.Input((32, 32, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = layers.Flatten()(x)  # position-dependent head: every cell reaches every output
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x))


def _nested_backbone():
    inner_in = keras.Input((32, 32, 1))
    inner = keras.Model(inner_in, layers.Conv2D(4, 3, padding="same")(inner_in))
    inputs = keras.Input((32, 32, 1))
    x = layers.GlobalAveragePooling2D()(inner(inputs))
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x))


def _spatial_attention():
    """A squeeze-and-excitation gate: global pooling inside the trunk."""
    inputs = keras.Input((32, 32, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    gate = layers.Dense(4, activation="sigmoid")(layers.GlobalAveragePooling2D()(x))
    x = layers.Multiply()([x, layers.Reshape((1, 1, 4))(gate)])
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x))


def _group_norm():
    inputs = keras.Input((32, 32, 1))
    x = layers.Conv2D(4, 3, padding="same")(inputs)
    x = layers.GroupNormalization(groups=2)(x)  # statistics over the whole map
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x))


def _same_average_pool():
    inputs = keras.Input((31, 31, 1))
    x = layers.Conv2D(4, 3, padding="same")(inputs)
    x = layers.AveragePooling2D(2, padding="same")(x)  # divides by the real cells only
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x))


class _Flipped(keras.Model):
    """A functional model whose own ``call`` differs from its graph."""

    def call(self, inputs, training=None):
        return super().call(inputs[:, ::-1], training=training)


def _own_call():
    inputs = keras.Input((32, 32, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    return _Flipped(inputs, layers.Dense(2, activation="softmax")(x), name="flipped")


FALLBACKS = {
    "own call": (_own_call, "its own call"),
    "flatten head": (_flatten_head, "is no global pooling"),
    "nested backbone": (_nested_backbone, "not known to act per pixel"),
    "squeeze-excitation": (_spatial_attention, "mixes"),
    "group norm": (_group_norm, "not known to act per pixel"),
}


@pytest.mark.parametrize("name", sorted(FALLBACKS))
@pytest.mark.slow
def test_models_the_analysis_cannot_cover_take_the_full_path(name):
    build, reason = FALLBACKS[name]
    keras.utils.set_random_seed(8)
    model = build()
    unsupported = incremental_unsupported_reason(model)
    assert unsupported is not None
    assert reason in unsupported
    assert occlusion_path(model) == occlusion_path(model, 8) == "full"
    with pytest.raises(ValueError, match="does not apply"):
        fast_occlusion(model, np.zeros((32, 32, 1), np.float32), 0, 8, 0.0, path="incremental")
    image = np.random.default_rng(8).random((32, 32, 1), dtype=np.float32)
    fast = fast_occlusion(model, image, 0, 8, 0.5)
    reference = tf_explain_occlusion(model, image, 0, 8, 0.5)
    if np.ptp(reference) > 0:
        assert _normalised_difference(fast, reference) <= TOLERANCE


def test_same_average_pooling_with_padding_takes_the_full_path():
    """Analysable graph, but the geometry for this image size is not a plain kernel."""
    keras.utils.set_random_seed(9)
    model = _same_average_pool()
    assert incremental_unsupported_reason(model) is None
    assert occlusion_path(model, 8) == "full"
    image = np.random.default_rng(9).random((31, 31, 1), dtype=np.float32)
    fast = fast_occlusion(model, image, 1, 8, 0.0)
    full = fast_occlusion(model, image, 1, 8, 0.0, path="full")
    np.testing.assert_array_equal(fast, full)


def test_unknown_path_is_refused(bundled, bundled_images):
    with pytest.raises(ValueError, match="path must be"):
        fast_occlusion(bundled.model, bundled_images[0], 0, 16, 0.0, path="fastest")


@pytest.mark.slow
def test_compiled_plan_does_not_keep_the_model_alive():
    keras.utils.set_random_seed(10)
    model = _strided_model()
    image = np.zeros((61, 61, 1), np.float32)
    fast_occlusion(model, image, 0, 8, 0.0, path="incremental")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


LUNGS_MODEL = REPO_ROOT / "ml" / "bundled" / "cxr-lungs" / "cxr-lungs.keras"


@pytest.mark.slow
def test_patches_fill_only_visible_pixels_and_both_paths_agree():
    """A model fed images blanked outside the lungs: a patch over the blank leaves it
    blank (else the model is shown what it never sees), on either path."""
    if not LUNGS_MODEL.is_file():
        pytest.skip("ml/bundled/cxr-lungs is not in this checkout")
    from ml.explain.methods import occlusion_map
    from ml.explain.occlusion import occluded_batch

    classifier = Classifier.load(LUNGS_MODEL)
    assert classifier.spec.mask_outside
    prepared, _, _ = classifier.prepare(open_image(IMAGES / "2168a917.jpg"))
    x, visible = prepared.x, prepared.visible
    assert visible is not None
    assert 0.1 < visible.mean() < 0.9
    assert (x[~visible] == 0).all()  # what the model is shown outside the lungs

    batch = occluded_batch(x, 16, 0.7, visible)
    assert (batch[:, ~visible] == 0).all()  # never painted
    plain = occluded_batch(x, 16, 0.7)
    assert (plain[:, ~visible] == 0.7).any()  # what the fill did before
    # Every visible pixel is filled by exactly one patch.
    assert np.array_equal((batch == 0.7).any(axis=(0, 3)) | ~visible, np.ones_like(visible))

    target = int(np.argmax(classifier.predict_array(x[np.newaxis])[0]))
    full = fast_occlusion(classifier.model, x, target, 16, 0.5, path="full", visible=visible)
    auto = fast_occlusion(classifier.model, x, target, 16, 0.5, visible=visible)
    assert np.abs(full - auto).max() < 1e-4
    blind = fast_occlusion(classifier.model, x, target, 16, 0.5, path="full")
    assert np.abs(blind - full).max() > 1e-3  # filling the blank changed the answers

    _raw, params, _ = occlusion_map(classifier.model, x, target, visible=visible)
    assert params["fill"] == "visible-mean"
    assert params["fill_value"] == pytest.approx(float(x[visible].mean()))
    assert params["fills"] == "visible pixels only"
    with pytest.raises(ValueError, match="visible is"):
        fast_occlusion(classifier.model, x, target, 16, 0.5, visible=visible[:-1])

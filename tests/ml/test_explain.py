"""ml.explain: every method on two architectures, a model with a known answer, faithfulness,
the randomisation check, rendering, storage and the CLI. No database."""

import json
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from ml.data.preprocess import open_image, preprocess
from ml.explain._common import normalise_map
from ml.explain.api import (
    METHODS,
    Heatmap,
    deletion_insertion,
    explain,
    fast_occlusion,
    heatmap_from_npy,
    heatmap_to_npy,
    last_conv_layer,
    random_heatmap,
    randomisation_check,
    render_overlay,
    tf_explain_occlusion,
)
from ml.models.architectures import build_compact_cnn
from ml.serving.classifier import Classifier
from tests.conftest import FIXTURES, IMAGES, fixture_manifest, ml_cli

TINY = FIXTURES / "models" / "cxr-tiny.keras"
QUADRANT = 32  # the corner model's square lies in [:QUADRANT, :QUADRANT] of 64 x 64


@pytest.fixture(scope="module")
def tiny():
    return Classifier.load(TINY)


@pytest.fixture(scope="module")
def fixture_images(tiny):
    rows = fixture_manifest()[::6]  # one image per source and class mix, 3 images
    return [preprocess(open_image(IMAGES / row["path"]), tiny.spec) for row in rows]


@pytest.fixture(scope="module")
def other_architecture():
    """Not the compact CNN: strided ELU conv, a separable/depthwise residual block with
    swish, LayerNorm + GELU, global max pooling and a separate Softmax layer."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(1)
    inputs = keras.Input((64, 64, 1), name="x")
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="elu", name="stem")(inputs)
    shortcut = x
    x = layers.SeparableConv2D(8, 3, padding="same", activation="swish", name="sep1")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.LeakyReLU(negative_slope=0.1, name="leaky")(x)
    x = layers.Add(name="residual")([x, shortcut])
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.SeparableConv2D(16, 3, padding="same", name="sep_last")(x)
    x = layers.LayerNormalization(name="ln")(x)
    x = layers.Activation("gelu", name="gelu")(x)
    x = layers.GlobalMaxPooling2D(name="gmp")(x)
    x = layers.Dense(3, name="logits")(x)
    outputs = layers.Softmax(name="softmax")(x)
    model = keras.Model(inputs, outputs, name="other")
    rng = np.random.default_rng(1)
    data = rng.random((96, 64, 64, 1), dtype=np.float32)
    labels = (data[:, :32].mean(axis=(1, 2, 3)) > 0.5).astype(int) + (data.mean() > 2)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(data, labels, epochs=2, batch_size=32, verbose=0)
    return model, rng.random((64, 64, 1), dtype=np.float32)


def _corner_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    images = rng.uniform(0.0, 0.6, (n, 64, 64, 1)).astype(np.float32)
    labels = np.arange(n) % 2
    for image, label in zip(images, labels, strict=True):
        if label:
            top, left = rng.integers(2, 11, size=2)
            image[top : top + 12, left : left + 12] = 1.0
    return images, labels


@pytest.fixture(scope="module")
def corner_model():
    """Class 1 iff a bright square sits in the top-left quadrant: the known answer."""
    import keras

    rng = np.random.default_rng(0)
    images, labels = _corner_data(320, rng)
    model = build_compact_cnn(input_size=64, n_classes=2, width=16, dropout=0.0, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=6, batch_size=32, verbose=0)
    test_images, test_labels = _corner_data(40, np.random.default_rng(1))
    accuracy = (model(test_images, training=False).numpy().argmax(1) == test_labels).mean()
    assert accuracy >= 0.95, f"the corner model did not learn its task ({accuracy:.2f})"
    positives = test_images[test_labels == 1][:6]
    return model, positives


def _assert_valid(heatmap: Heatmap, size: int, method: str) -> None:
    assert isinstance(heatmap, Heatmap)
    assert heatmap.method == method
    assert heatmap.values.shape == (size, size)
    assert heatmap.values.dtype == np.float32
    assert np.all(np.isfinite(heatmap.values))
    assert heatmap.values.min() >= 0.0
    assert heatmap.values.max() <= 1.0
    assert heatmap.values.max() == pytest.approx(1.0)  # min-max scaled, not constant
    assert heatmap.params
    json.dumps(heatmap.params)  # storable as is
    assert heatmap.seconds > 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.slow
def test_each_method_gives_an_input_sized_unit_range_map_on_the_compact_cnn(
    tiny, fixture_images, method
):
    heatmap = explain(tiny.model, fixture_images[0], method, classes=tiny.classes)
    _assert_valid(heatmap, 128, method)
    top = int(np.argmax(tiny.predict_array(fixture_images[0][np.newaxis])[0]))
    assert heatmap.target_class == top
    assert heatmap.target_label == tiny.classes[top]
    assert (heatmap.layer == "last_conv") == (method == "gradcam")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.slow
def test_each_method_works_on_a_different_architecture(other_architecture, method):
    model, image = other_architecture
    heatmap = explain(model, image, method, target_class=2)
    _assert_valid(heatmap, 64, method)
    assert heatmap.target_class == 2
    assert heatmap.target_label is None


@pytest.mark.slow
def test_params_record_what_determines_each_map(tiny, fixture_images):
    x = fixture_images[1]
    gradcam = explain(tiny.model, x, "gradcam")
    assert gradcam.params["guided"] is False  # standard Grad-CAM, not tf-explain's default
    assert gradcam.params["layer"] == "last_conv"
    occlusion = explain(tiny.model, x, "occlusion")
    assert occlusion.params["patch_size"] == 16
    assert occlusion.params["fill"] == "image-mean"
    assert occlusion.params["fill_value"] == pytest.approx(float(x.mean()), abs=1e-6)
    assert explain(tiny.model, x, "occlusion", fill_value=0.5).params["fill_value"] == 0.5
    smooth = explain(tiny.model, x, "smoothgrad", samples=8, noise=0.2, seed=3)
    assert (smooth.params["samples"], smooth.params["noise"], smooth.params["seed"]) == (8, 0.2, 3)
    assert explain(tiny.model, x, "ig", steps=16, baseline=0.5).params["baseline"] == 0.5
    assert explain(tiny.model, x, "guided").params["score"] == "logit"
    assert explain(tiny.model, x, "gradcam", layer="relu3").layer == "relu3"
    with pytest.raises(ValueError, match="4-D output"):
        explain(tiny.model, x, "gradcam", layer="gap")
    guided_cam = explain(tiny.model, x, "gradcam", guided=True)
    assert guided_cam.params["guided"] is True
    assert not np.allclose(guided_cam.values, gradcam.values)


@pytest.mark.slow
def test_maps_are_reproducible(tiny, fixture_images):
    for method in ("smoothgrad", "occlusion", "gradcam"):
        first = explain(tiny.model, fixture_images[2], method).values
        again = explain(tiny.model, fixture_images[2], method).values
        assert np.array_equal(first, again), method


def test_bad_requests_are_refused_with_a_clear_message(tiny, fixture_images):
    with pytest.raises(ValueError, match="Unknown explanation method"):
        explain(tiny.model, fixture_images[0], "lime")
    with pytest.raises(ValueError, match="does not fit the model input"):
        explain(tiny.model, np.zeros((64, 64, 1), np.float32), "gradcam")
    with pytest.raises(ValueError, match="outside the model's 3 outputs"):
        explain(tiny.model, fixture_images[0], "gradcam", target_class=3)
    with pytest.raises(TypeError):
        explain(tiny.model, fixture_images[0], "gradcam", patch_size=4)


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
@pytest.mark.slow
def test_heatmap_mass_falls_on_the_square_that_decides_the_class(corner_model, method):
    model, positives = corner_model
    shares = []
    for image in positives:
        values = explain(model, image, method, target_class=1).values
        shares.append(values[:QUADRANT, :QUADRANT].sum() / values.sum())
        peak = np.unravel_index(np.argmax(values), values.shape)
        assert max(peak) < QUADRANT, f"{method}: peak at {peak}, outside the corner quadrant"
    # A quarter of the area holds a quarter of the mass by chance.
    assert np.mean(shares) > 0.5, f"{method}: mass share in the corner quadrant {shares}"


@pytest.mark.slow
def test_gradcam_beats_a_random_map_on_deletion_and_insertion(corner_model):
    model, positives = corner_model
    cam, rand = [], []
    for index, image in enumerate(positives):
        heatmap = explain(model, image, "gradcam", target_class=1)
        cam.append(deletion_insertion(model, image, heatmap.values, 1, steps=16))
        rand.append(
            deletion_insertion(model, image, random_heatmap((64, 64), seed=index), 1, steps=16)
        )
    mean = {key: np.mean([r[key] for r in cam]) for key in ("deletion_auc", "insertion_auc")}
    base = {key: np.mean([r[key] for r in rand]) for key in ("deletion_auc", "insertion_auc")}
    assert mean["deletion_auc"] < base["deletion_auc"] - 0.1
    assert mean["insertion_auc"] > base["insertion_auc"] + 0.1
    result = cam[0]
    assert result["steps"] == 16
    assert len(result["deletion_curve"]) == len(result["fractions"]) == 17
    assert result["fractions"][0] == 0.0
    assert result["fractions"][-1] == 1.0


def test_deletion_curve_starts_at_the_image_score_and_ends_at_the_baseline_score(
    tiny, fixture_images
):
    x = fixture_images[0]
    result = deletion_insertion(tiny.model, x, random_heatmap((128, 128)), 0, steps=4)
    image_p = tiny.predict_array(x[np.newaxis])[0, 0]
    black_p = tiny.predict_array(np.zeros_like(x)[np.newaxis])[0, 0]
    assert result["deletion_curve"][0] == pytest.approx(image_p, abs=1e-5)
    assert result["deletion_curve"][-1] == pytest.approx(black_p, abs=1e-5)
    assert result["insertion_curve"][0] == pytest.approx(black_p, abs=1e-5)
    assert result["insertion_curve"][-1] == pytest.approx(image_p, abs=1e-5)
    with pytest.raises(ValueError, match="not the image's"):
        deletion_insertion(tiny.model, x, np.zeros((64, 64)), 0)


def test_random_heatmap_by_cells_ranks_whole_regions_together():
    pixels = random_heatmap((64, 64), seed=1)
    regions = random_heatmap((64, 64), seed=1, cells=8)
    assert pixels.shape == regions.shape == (64, 64)
    assert np.array_equal(pixels, random_heatmap((64, 64), seed=1))
    # Neighbours are far more alike in the cell map than in the per-pixel one.
    assert np.abs(np.diff(regions, axis=1)).mean() < 0.2 * np.abs(np.diff(pixels, axis=1)).mean()


@pytest.mark.slow
def test_explaining_never_calls_model_predict_and_traces_once(tiny, fixture_images, monkeypatch):
    from ml.explain import _common

    def refuse(*args, **kwargs):
        raise AssertionError("model.predict builds a data pipeline per call; use the cache")

    monkeypatch.setattr(tiny.model, "predict", refuse)
    for x in fixture_images[:2]:
        for method in METHODS:
            heatmap = explain(tiny.model, x, method)
            deletion_insertion(tiny.model, x, heatmap.values, heatmap.target_class)
    compiled = _common._CACHE[tiny.model]
    for key, function in compiled.items():
        if hasattr(function, "experimental_get_tracing_count"):
            assert function.experimental_get_tracing_count() <= 1, key


@pytest.mark.parametrize(("patch_size", "fill_value"), [(16, 0.5), (8, None), (12, 0.0)])
@pytest.mark.slow
def test_fast_occlusion_equals_tf_explain_occlusion(tiny, fixture_images, patch_size, fill_value):
    x = fixture_images[1]
    fill = float(x.mean()) if fill_value is None else fill_value
    fast = fast_occlusion(tiny.model, x, 1, patch_size, fill)
    reference = tf_explain_occlusion(tiny.model, x, 1, patch_size, fill)
    assert fast.shape == reference.shape == (128, 128)
    assert np.abs(normalise_map(fast) - normalise_map(reference)).max() <= 1e-4
    assert np.ptp(fast) > 0


@pytest.mark.slow
def test_fast_occlusion_equals_tf_explain_on_the_other_architecture(other_architecture):
    model, image = other_architecture
    fast = fast_occlusion(model, image, 0, 8, 0.25)
    reference = tf_explain_occlusion(model, image, 0, 8, 0.25)
    assert np.abs(normalise_map(fast) - normalise_map(reference)).max() <= 1e-4


def test_tf_explain_reference_is_restored_after_use(tiny, fixture_images):
    import tf_explain.core.occlusion_sensitivity as module

    before = module.apply_grey_patch
    tf_explain_occlusion(tiny.model, fixture_images[0], 0, 32, 0.5)
    assert module.apply_grey_patch is before


@pytest.mark.slow
def test_randomisation_check_finds_gradcam_depends_on_the_weights(corner_model):
    model, positives = corner_model
    result = randomisation_check(model, list(positives[:3]), "gradcam", seed=0)
    assert result["method"] == "gradcam"
    assert result["n_images"] == 3
    assert result["mode"] == "cascading"
    assert len(result["stages"]) == 9  # conv+bn per block x 4, then the dense layer
    assert result["stages"][0]["top_layer_randomised_down_to"] == "probs"
    assert result["stages"][-1]["n_layers_randomised"] == 9
    assert result["spearman_mean"] < 0.5
    assert result["ssim_mean"] < 0.6
    full = randomisation_check(model, list(positives[:2]), "occlusion", mode="full", patch_size=16)
    assert len(full["stages"]) == 1
    assert full["spearman_mean"] < 0.9


@pytest.mark.slow
def test_last_conv_layer_walks_the_graph(tiny, other_architecture):
    import keras

    assert last_conv_layer(tiny.model) == "last_conv"
    assert last_conv_layer(other_architecture[0]) == "sep_last"
    inputs = keras.Input((16,))
    dense_only = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8)(inputs)))
    with pytest.raises(ValueError, match="no convolution layer with a 4-D output"):
        last_conv_layer(dense_only)
    image_in = keras.Input((8, 8, 1))
    flat = keras.layers.Flatten()(image_in)
    no_conv = keras.Model(image_in, keras.layers.Dense(2, activation="softmax")(flat))
    with pytest.raises(ValueError, match="Grad-CAM needs one"):
        explain(no_conv, np.zeros((8, 8, 1), np.float32), "gradcam")
    assert explain(
        no_conv, np.ones((8, 8, 1), np.float32), "occlusion", patch_size=2
    ).values.shape == (8, 8)


def test_gradcam_reaches_a_conv_layer_inside_a_nested_backbone():
    """ImageNet backbones are nested models; their conv layers are not in the outer graph."""
    import keras
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(2)
    inner_in = keras.Input((32, 32, 3))
    conv = layers.Conv2D(6, 3, padding="same", name="inner_conv")(inner_in)
    backbone = keras.Model(inner_in, layers.Activation("relu")(conv), name="backbone")
    inputs = keras.Input((32, 32, 1))
    x = layers.Concatenate()([inputs, inputs, inputs])
    x = layers.GlobalAveragePooling2D()(backbone(x))
    model = keras.Model(inputs, layers.Dense(3, activation="softmax", name="probs")(x))
    assert last_conv_layer(model) == "backbone/inner_conv"
    image = np.random.default_rng(0).random((32, 32, 1), dtype=np.float32)
    heatmap = explain(model, image, "gradcam", target_class=0)
    assert heatmap.layer == "backbone/inner_conv"
    # The same Grad-CAM computed by hand on the sub-model.
    features = keras.Model(inner_in, [conv, backbone.output])
    with tf.GradientTape() as tape:
        activations, out = features(np.repeat(image[np.newaxis], 3, axis=-1))
        score = model.get_layer("probs")(tf.reduce_mean(out, axis=(1, 2)))[:, 0]
    grads = tape.gradient(score, activations)
    weights = tf.reduce_mean(grads, axis=(1, 2))
    expected = np.maximum((activations * weights[:, None, None, :]).numpy().sum(-1)[0], 0)
    assert np.abs(heatmap.values - normalise_map(expected)).max() < 1e-4


def test_overlay_is_a_png_with_a_colour_bar(tiny, fixture_images):
    x = fixture_images[0]
    heatmap = explain(tiny.model, x, "gradcam", classes=tiny.classes)
    data = render_overlay(x, heatmap.values, title="gradcam: covid19")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    picture = Image.open(BytesIO(data))
    picture.load()
    assert picture.mode in {"RGB", "RGBA"}
    assert picture.width > 128
    assert picture.height > 128
    pixels = np.asarray(picture.convert("RGB"), dtype=np.int16)
    colourful = np.abs(pixels[..., 0] - pixels[..., 2]) > 60  # jet: blue and red ends
    assert colourful[:, int(picture.width * 0.8) :].any()  # the colour bar column
    assert colourful[:, : int(picture.width * 0.75)].any()  # the overlay
    with pytest.raises(ValueError, match="alpha"):
        render_overlay(x, heatmap.values, alpha=2.0)


@pytest.mark.slow
def test_npy_round_trip_is_exact(tiny, fixture_images):
    values = explain(tiny.model, fixture_images[0], "smoothgrad").values
    restored = heatmap_from_npy(heatmap_to_npy(values))
    assert restored.dtype == np.float32
    assert np.array_equal(restored, values)


@pytest.mark.slow
def test_sanity_cli_prints_json(tmp_path, capsys):
    from ml.cli import main

    image = str(IMAGES / fixture_manifest()[0]["path"])
    code = main(
        [
            "classifier",
            "sanity",
            "--model",
            str(TINY),
            "--method",
            "gradcam",
            "--mode",
            "full",
            image,
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["method"] == "gradcam"
    assert 0 <= result[0]["ssim_mean"] < 1


@pytest.mark.slow
def test_explain_cli_writes_readable_npy_and_png(tmp_path):
    row = fixture_manifest()[0]
    out = tmp_path / "out"
    completed = ml_cli(
        "classifier",
        "explain",
        "--model",
        TINY,
        "--method",
        "gradcam",
        IMAGES / row["path"],
        "--out",
        out,
    )
    assert completed.returncode == 0, completed.stderr
    stem = row["path"].rsplit(".", 1)[0]
    values = np.load(out / f"{stem}.gradcam.npy")
    assert values.shape == (128, 128)
    assert values.dtype == np.float32
    assert 0.0 <= values.min() <= values.max() <= 1.0
    with Image.open(out / f"{stem}.gradcam.png") as picture:
        assert picture.format == "PNG"
        assert picture.width > 128
    assert "deletion AUC" in completed.stdout
    assert "insertion AUC" in completed.stdout
    assert "target" in completed.stdout

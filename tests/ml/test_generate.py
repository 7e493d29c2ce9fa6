"""The synthetic X-ray generator: metrics, the watermark, and a tiny generator
trained for an epoch on the committed fixture images, sampled, evaluated and resumed."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import GifImagePlugin, Image

from ml.data.labels import CLASSES
from ml.generate import metrics
from ml.generate.watermark import (
    MATCH_THRESHOLD,
    band_score,
    grid_png,
    metadata_reason,
    synthetic_reason,
)
from tests.conftest import IMAGES, fixture_manifest, ml_cli

# --- metrics ---------------------------------------------------------------------------------


def test_frechet_distance_is_zero_for_one_set_and_grows_with_the_mean_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + 2.0  # same covariance: the distance is |shift|^2 = 8 * 4
    assert metrics.frechet_distance(a, shifted) == pytest.approx(32.0, rel=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(a[:1], a)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_another():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    far = rng.normal(loc=1.5, size=(300, 8))
    assert abs(metrics.kid(a, b)) < 0.05
    assert metrics.kid(a, far) > 10 * abs(metrics.kid(a, b))


def test_bootstrap_interval_surrounds_the_estimate():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(150, 4)), rng.normal(loc=0.5, size=(150, 4))
    for metric in ("fd", "kid"):
        est = metrics.bootstrap_distance(metric, a, b, n_boot=50)
        assert est.low <= est.value <= est.high
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.bootstrap_distance("psnr", a, b)


def test_precision_and_recall_of_distributions():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(200, 4))
    same = rng.normal(size=(200, 4))
    elsewhere = rng.normal(loc=20.0, size=(200, 4))
    collapsed = np.repeat(real[:1], 200, axis=0) + rng.normal(scale=1e-3, size=(200, 4))
    pr_same = metrics.precision_recall(real, same, repeats=5)
    assert pr_same["precision"].value > 0.8
    assert pr_same["recall"].value > 0.8
    pr_far = metrics.precision_recall(real, elsewhere, repeats=5)
    assert pr_far["precision"].value == 0.0
    assert pr_far["recall"].value == 0.0
    # Mode collapse onto one real image: faithful (precision) but not diverse (recall).
    pr_collapsed = metrics.precision_recall(real, collapsed, repeats=5)
    assert pr_collapsed["precision"].value > 0.9
    assert pr_collapsed["recall"].value < 0.1


def test_nearest_and_wilson():
    ref = np.array([[0.0, 0.0], [10.0, 0.0]])
    idx, dist = metrics.nearest(np.array([[9.0, 0.0], [0.0, 1.0]]), ref)
    assert idx.tolist() == [1, 0]
    assert dist.tolist() == pytest.approx([1.0, 1.0])
    rng = np.random.default_rng(4)
    images = np.zeros((5, 16, 16))
    images[:, 4:12, 4:12] = rng.random((5, 8, 8))
    moved = np.roll(images[3:4], shift=(2, -1), axis=(1, 2))  # a copy moved by (2, -1) px
    _plain_idx, plain = metrics.nearest(moved.reshape(1, -1), images.reshape(5, -1))
    idx, dist = metrics.nearest_shifted(moved, images, max_shift=2)
    assert idx.tolist() == [3]
    assert dist[0] == pytest.approx(0.0)
    assert plain[0] > 1.0  # a plain pixel distance misses the copy
    low, high = metrics.wilson(50, 100)
    assert low < 0.5 < high
    assert high - low < 0.25


# --- watermark -------------------------------------------------------------------------------


def _grid() -> bytes:
    rng = np.random.default_rng(0)
    return grid_png(rng.random((6, 64, 64)) * 0.7, label="covid19", model="g@x", seed=3)


def test_grid_carries_the_mark_in_its_metadata_and_its_pixels():
    image = Image.open(io.BytesIO(_grid()))
    meta = json.loads(image.info["cxr-synthetic"])
    assert meta["synthetic"] is True
    assert meta["class"] == "covid19"
    assert meta["n"] == 6
    assert "SYNTHETIC" in image.info["Description"]
    assert metadata_reason(image)
    assert band_score(np.asarray(image.convert("L"))) > 0.95


@pytest.mark.parametrize("scale", [0.6, 1.0, 1.7, 3.0])
def test_a_cut_out_tile_without_metadata_is_still_found(scale):
    grid = Image.open(io.BytesIO(_grid())).convert("L")
    tile = grid.crop((4, 22, 132, 150))  # the first sample tile (gap 4, header 18)
    side = round(128 * scale)
    tile = tile.resize((side, side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    tile.save(buffer, format="JPEG", quality=75)  # metadata gone, pixels re-encoded
    reloaded = Image.open(io.BytesIO(buffer.getvalue()))
    assert metadata_reason(reloaded) is None
    reason = synthetic_reason(reloaded)
    assert reason is not None
    assert "pixels" in reason


def test_real_radiographs_are_not_taken_for_synthetic():
    for row in fixture_manifest():
        image = Image.open(IMAGES / row["path"])
        assert synthetic_reason(image) is None, row["path"]
        assert band_score(np.asarray(image.convert("L"))) < MATCH_THRESHOLD - 0.15


def test_a_films_score_is_searched_once_and_again_when_a_pixel_changes(monkeypatch):
    from ml.generate import watermark

    searched: list[tuple[int, ...]] = []
    search = watermark._search
    monkeypatch.setattr(watermark, "_scores", type(watermark._scores)())

    def counted(array):
        searched.append(array.shape)
        return search(array)

    monkeypatch.setattr(watermark, "_search", counted)
    gray = np.asarray(Image.open(IMAGES / fixture_manifest()[0]["path"]).convert("L")).copy()
    first = band_score(gray)
    assert band_score(gray.copy()) == first
    assert len(searched) == 1
    gray[0, 0] ^= 0xFF
    band_score(gray)
    assert len(searched) == 2
    band_score(gray.reshape(gray.shape[0] * 2, -1))  # the same bytes, another shape
    assert len(searched) == 3


# --- networks --------------------------------------------------------------------------------


@pytest.mark.slow
def test_networks_shapes_and_diff_augment_keeps_the_background():
    import tensorflow as tf

    from ml.generate.model import build_discriminator, build_generator, diff_augment

    g = build_generator(size=32, width=8)
    d = build_discriminator(size=32, width=8)
    z = tf.random.normal((4, 128))
    labels = tf.constant([0, 1, 2, 0])
    x = g([z, labels], training=False)
    assert x.shape == (4, 32, 32, 1)
    assert float(tf.reduce_min(x)) >= -1.0
    assert float(tf.reduce_max(x)) <= 1.0
    assert d([x, labels], training=True).shape == (4, 1)
    background = -tf.ones((2, 32, 32, 1))
    augmented = diff_augment(background, tf.constant([1, 2], tf.int64))
    np.testing.assert_allclose(augmented.numpy(), -1.0, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_generator(size=40)


# --- a tiny generator on the fixtures ---------------------------------------------------------


def _split_csv(path) -> None:
    """The fixtures with a split per image: per class, the first goes to test, the second
    to val, the rest to train."""
    rows = fixture_manifest()
    seen: dict[str, int] = {}
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient", "source", "split"])
        for row in rows:
            k = seen.get(row["label"], 0)
            seen[row["label"]] = k + 1
            split = "test" if k < 2 else "val" if k == 2 else "train"
            writer.writerow(
                [IMAGES / row["path"], row["label"], row["patient"], row["source"], split]
            )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ml.generate.data import CLASSIFIER, load_gan_data
    from ml.generate.features import ClassifierFeatures
    from ml.generate.training import GanConfig, train_generator
    from ml.models.artifacts import read_card

    root = tmp_path_factory.mktemp("gan")
    labels = root / "labels.csv"
    _split_csv(labels)
    data = load_gan_data(
        [labels], classifier_card=read_card(CLASSIFIER), size=32, cache=None, progress=False
    )
    features = ClassifierFeatures()
    config = GanConfig(size=32, width=8, d_width=8, batch_size=4, epochs=1, snapshot_every=1)
    result = train_generator(
        data, root / "out", config, work_dir=root / "work", features=features, progress=False
    )
    return {"root": root, "labels": labels, "data": data, "result": result, "config": config}


@pytest.mark.slow
def test_data_are_the_classifier_preprocessing_at_the_generator_size(tiny):
    data = tiny["data"]
    assert data.split_source == "given with the data"
    assert data.spec.version == 2
    assert data.spec.mask_outside
    assert data.spec.input_size == 160
    counts = data.counts()
    assert sum(counts["test"].values()) == 6
    assert sum(counts["val"].values()) == 3
    train = data.splits["train"]
    assert train.x.shape[1:] == (32, 32, 1)
    assert train.x.dtype == np.float32
    assert train.x.min() >= 0.0
    assert train.x.max() <= 1.0
    inside = train.x[train.x > 0]
    assert inside.min() >= 0.02  # the background rule: under SNAP is 0
    assert 0.05 < (train.x > 0).mean() < 0.9  # lungs kept, the outside masked


def test_unknown_images_are_refused_without_the_classifier_split(tmp_path):
    from ml.generate.data import CLASSIFIER, load_gan_data
    from ml.models.artifacts import read_card

    with pytest.raises(ValueError, match="not in"):
        load_gan_data(
            [IMAGES / "manifest.csv"],
            classifier_card=read_card(CLASSIFIER),
            size=32,
            cache=None,
            progress=False,
        )


@pytest.mark.slow
def test_one_epoch_writes_generator_card_and_gif(tiny):
    from ml.models.artifacts import read_card, sha256_file

    result = tiny["result"]
    card = read_card(result.artifact)
    assert card["kind"] == "generator"
    assert card["sha256"] == sha256_file(result.artifact)
    assert card["image_size"] == 32
    assert card["classes"] == list(CLASSES)
    assert card["data"]["trained_on"] == "train split only"
    assert card["training"]["epochs_run"] == 1
    assert card["selection"]["chosen_epoch"] == 1
    assert card["selection"]["snapshots"][0]["val_frechet_mean"] >= 0
    gif = Image.open(result.gif)
    assert isinstance(gif, GifImagePlugin.GifImageFile)
    assert gif.n_frames == 2


@pytest.mark.slow
def test_samples_are_deterministic_per_seed_and_class(tiny):
    from ml.generate.sampler import Generator

    generator = Generator.load(tiny["result"].artifact)
    a = generator.sample("covid19", 4, seed=7)
    assert a.shape == (4, 32, 32)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, generator.sample("covid19", 4, seed=7))
    assert not np.array_equal(a, generator.sample("covid19", 4, seed=8))
    assert not np.array_equal(a, generator.sample("normal", 4, seed=7))
    with pytest.raises(ValueError, match="Unknown class"):
        generator.sample("flu", 1)
    with pytest.raises(ValueError, match="between 1 and 256"):
        generator.sample("normal", 0)


@pytest.mark.slow
def test_a_changed_file_is_refused(tiny, tmp_path):
    import shutil

    from ml.generate.sampler import Generator
    from ml.models.artifacts import ArtifactIntegrityError

    artifact = tiny["result"].artifact
    copy = tmp_path / artifact.name
    shutil.copy(artifact, copy)
    shutil.copy(artifact.with_name("generator.card.json"), tmp_path / "generator.card.json")
    with copy.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactIntegrityError):
        Generator.load(copy)


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint(tiny, tmp_path):
    from ml.generate.training import GanConfig, train_generator

    config = GanConfig(**{**tiny["config"].__dict__, "epochs": 2})
    result = train_generator(
        tiny["data"], tmp_path / "out", config, work_dir=tiny["root"] / "work", progress=False
    )
    training = result.card["training"]
    assert training["resumed_from_epoch"] == 1
    assert training["epochs_run"] == 2
    assert [h["epoch"] for h in training["history"]] == [1, 2]


@pytest.mark.slow
def test_cli_sample_writes_a_marked_grid(tiny, tmp_path):
    out = tmp_path / "grid.png"
    model = tiny["result"].artifact
    done = ml_cli("generate", "sample", "--model", model, "--class", "pneumonia", "--n", "3",
                  "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    image = Image.open(out)
    assert json.loads(image.info["cxr-synthetic"])["class"] == "pneumonia"
    assert synthetic_reason(image)
    missing = ml_cli("generate", "sample", "--model", tmp_path / "none.keras", "--class",
                     "normal", "--out", out)  # fmt: skip
    assert missing.returncode == 2
    assert "No generator" in missing.stderr
    bad = ml_cli("generate", "sample", "--class", "flu", "--out", out)
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr


@pytest.mark.slow
def test_evaluation_writes_the_report_and_its_figures(tiny, tmp_path):
    from ml.generate.evaluation import EvalConfig, evaluate_generator

    config = EvalConfig(c2st_epochs=1, n_boot=5, pr_repeats=2, skip_usefulness=True)
    report = evaluate_generator(
        tiny["data"], tiny["result"].artifact, tmp_path / "report", config, progress=False
    )
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    text = report.read_text()
    for heading in ("## 1. Distribution", "## 2. Memorisation", "## 3. Classifier two-sample"):
        assert heading in text
    assert "## 4. Usefulness" not in text  # skipped, and the report says nothing about it
    n_train = len(tiny["data"].splits["train"])
    assert results["distribution"]["all"]["generated"]["frechet"]["value"] >= 0
    assert results["distribution"]["all"]["train"]["n"] == n_train
    assert results["distribution"]["all"]["generated"]["n"] == n_train
    pixel = results["memorisation"]["pixel"]
    assert pixel["generated_ratio"]["n"] == n_train
    # Known copies of training images (noisy; moved by 2 px) sit below every real pair.
    for control in ("noisy copy", "moved copy"):
        assert pixel["controls"][control]["ratio"]["median"] < pixel["test_ratio"]["min"]
    assert results["memorisation"]["cross_split_duplicates"] == []  # no picture in two splits
    assert 0.0 <= results["two_sample_test"]["accuracy"] <= 1.0
    # A person's reading (notes.md) goes into the report, rewritten without measuring.
    (tmp_path / "report" / "notes.md").write_text("The samples are blurred.")
    done = ml_cli("generate", "evaluate", "--report-only", "--model", tiny["result"].artifact,
                  "--out", tmp_path / "report")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "The samples are blurred." in report.read_text()
    assert ml_cli("generate", "evaluate", "--out", tmp_path).returncode == 2  # no --data
    for name in ("samples.png", "closest-pixel.png", "closest-feature.png",
                 "closest-test-pixel.png", "memorisation-ratios.png"):  # fmt: skip
        assert (tmp_path / "report" / name).stat().st_size > 0


@pytest.mark.slow
def test_a_usefulness_run_trains_on_synthetic_images_and_scores_the_real_test_split(tiny):
    from ml.generate.evaluation import EvalConfig, usefulness_run
    from ml.generate.sampler import Generator

    data = tiny["data"]
    generator = Generator.load(tiny["result"].artifact)
    synthetic = generator.sample_classes(dict.fromkeys(CLASSES, 4), seed=1)
    assert synthetic[0].shape == (12, 32, 32, 1)
    assert synthetic[1].tolist().count(0) == 4
    config = EvalConfig(usefulness_epochs=1, n_bootstrap_f1=10)
    row = usefulness_run("synthetic", 0, data, synthetic, config)
    assert row["n_train"] == 12
    assert row["epochs_run"] == 1
    assert 0.0 <= row["macro_f1"] <= 1.0
    assert row["_probs"].shape == (len(data.splits["test"]), len(CLASSES))
    assert row["shortcuts"]["n"] == len(data.splits["test"])
    with pytest.raises(ValueError, match="unknown condition"):
        usefulness_run("imagined", 0, data, synthetic, config)

"""The Grad-CAM training animation: one frame per epoch, and no effect on training."""

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, ImageSequence

from ml.data.loaders import load_generic
from ml.explain.animation import TILE, pick_images
from ml.models.artifacts import read_card
from ml.models.training import TrainConfig, train
from ml.serving.classifier import Classifier
from tests.conftest import IMAGES

MANIFEST = IMAGES / "manifest.csv"


def config(**overrides):
    base = {
        "epochs": 3,
        "patience": 1,
        "input_size": 64,
        "width": 8,
        "batch_size": 8,
        "n_bootstrap": 20,
    }
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def with_and_without(tmp_path_factory):
    on = train(
        load_generic(MANIFEST), tmp_path_factory.mktemp("on"), config(), progress=False, name="m"
    )
    off = train(
        load_generic(MANIFEST),
        tmp_path_factory.mktemp("off"),
        config(gradcam_animation=False),
        progress=False,
        name="m",
    )
    return on, off


@pytest.mark.slow
def test_training_writes_an_animated_gif_with_one_frame_per_epoch(with_and_without):
    on, _ = with_and_without
    gif = on.artifact.parent / "m.gradcam.gif"
    assert read_card(on.artifact)["training_animation"] == "m.gradcam.gif"
    epochs_run = on.card["training"]["epochs_run"]
    assert epochs_run >= 2
    assert gif.stat().st_size < 200_000
    with Image.open(gif) as image:
        assert isinstance(image, GifImagePlugin.GifImageFile)
        assert image.is_animated
        assert image.n_frames == epochs_run
        assert image.info["loop"] == 0  # forever
        assert image.info["duration"] == 400
        # Three validation images side by side (128 px tiles), caption above and below.
        n_tiles = len(pick_images(_val_labels(on), 3))
        assert image.size[0] == n_tiles * TILE + (n_tiles - 1) * 4
        assert image.size[1] > TILE
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]
    # The maps change as the model learns; the frames are not copies of one another.
    assert not np.array_equal(frames[0], frames[-1])
    # Heat colours of the 'jet' map are present (strongly red or blue pixels).
    tiles = frames[-1][20 : 20 + TILE].astype(int)
    assert ((tiles[..., 0] - tiles[..., 2]) > 60).any()
    assert ((tiles[..., 2] - tiles[..., 0]) > 60).any()


def _val_labels(result):
    from ml.data.labels import CLASSES

    rows = (result.artifact.parent / "splits.csv").read_text().splitlines()[1:]
    return [CLASSES.index(r.split(",")[2]) for r in rows if r.split(",")[4] == "val"]


@pytest.mark.slow
def test_the_animation_does_not_change_the_trained_weights(with_and_without):
    on, off = with_and_without
    assert not (off.artifact.parent / "m.gradcam.gif").exists()
    assert "training_animation" not in read_card(off.artifact)
    assert on.card["training"]["epochs_run"] == off.card["training"]["epochs_run"]
    first = Classifier.load(on.artifact).model.get_weights()
    second = Classifier.load(off.artifact).model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert on.metrics.macro_f1 == off.metrics.macro_f1
    assert on.metrics.ece == off.metrics.ece


def test_images_are_picked_one_per_class_first_without_randomness():
    labels = [2, 2, 0, 2, 1, 0]
    assert pick_images(labels, 3) == [0, 2, 4]
    assert pick_images(labels, 3) == pick_images(list(labels), 3)
    # A class missing from the split: the next images fill the places.
    assert pick_images([1, 1, 1, 2], 3) == [0, 1, 3]
    assert pick_images([0], 3) == [0]
    assert pick_images(labels, 3, max_images=2) == [2, 4]  # classes 0 and 1 first


def test_picked_images_come_from_different_sources_where_possible():
    labels = [0, 1, 1, 2, 2, 0]
    sources = ["a", "a", "b", "a", "c", "b"]
    assert pick_images(labels, 3, sources=sources) == [0, 2, 4]
    # Only one source: the first of each class, as without sources.
    assert pick_images(labels, 3, sources=["a"] * 6) == pick_images(labels, 3) == [0, 1, 3]


def test_cli_can_turn_the_animation_off():
    from ml.cli import build_parser

    args = build_parser().parse_args(
        ["classifier", "train", "--data", str(MANIFEST), "--out", "x", "--no-gradcam-animation"]
    )
    assert args.gradcam_animation is False
    args = build_parser().parse_args(["classifier", "train", "--data", str(MANIFEST), "--out", "x"])
    assert args.gradcam_animation is None  # TrainConfig's default (on)

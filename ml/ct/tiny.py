"""A tiny real CT model for tests: trained for 2 epochs on the committed fixtures.

Tests of ``ml.ct`` and of the CT platform need a real Keras model with the bundled
model's interface (three heads, a card with preprocessing and post-processing) without
``../shared/datasets``. :func:`build_tiny_ct_model` trains a narrow U-Net on all 16
slices of ``tests/fixtures/ct/`` (9 zenodo, 7 MedSeg) for a few seconds and writes
``ct-tiny.keras`` + card; a second call with the same fixtures, settings, code and Keras
version returns the file already there (the card records a hash of them all). It is a
plumbing model, not a segmentation one: its card says so.

    python -m ml.ct.tiny --out var/ct-tiny
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from dataclasses import asdict
from pathlib import Path

from ml.ct.data import medseg_samples, zenodo_samples

log = logging.getLogger(__name__)

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "ct"
TINY_NAME = "ct-tiny"
TINY_SETTINGS = {"width": 8, "depth": 4, "epochs": 6, "batch_size": 4, "seed": 0}
# Bumped when the code that builds or saves the model changes (2: batch norm folded,
# 3: lung confidence bar).
TINY_FORMAT = 3


# The code that builds, trains and saves the model: a change to any of it trains again.
SOURCES = ("tiny.py", "training.py", "model.py", "data.py", "preprocess.py", "segmenter.py")


def fixtures_sha256(fixtures: Path = FIXTURES) -> str:
    """What the tiny model is made from: the fixtures, the settings, the ``ml/ct`` code
    that builds it and the Keras and TensorFlow versions (a model built from the same
    hash is reused)."""
    from importlib.metadata import version

    versions = (version("keras"), version("tensorflow"))
    digest = hashlib.sha256(repr((TINY_FORMAT, sorted(TINY_SETTINGS.items()), versions)).encode())
    for path in sorted(p for p in fixtures.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(fixtures)).encode())
        digest.update(path.read_bytes())
    here = Path(__file__).resolve().parent
    for name in SOURCES:
        digest.update(name.encode())
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def build_tiny_ct_model(out_dir: Path, fixtures: Path = FIXTURES) -> Path:
    """Train (or reuse) ``out_dir/ct-tiny.keras`` on ``fixtures``; returns its path."""
    from ml.models.artifacts import card_path, read_card

    out_dir = Path(out_dir)
    artifact = out_dir / f"{TINY_NAME}.keras"
    digest = fixtures_sha256(fixtures)
    if (
        artifact.exists()
        and card_path(artifact).exists()
        and read_card(artifact).get("training_data", {}).get("fixtures_sha256") == digest
    ):
        return artifact

    import keras
    import tensorflow as tf

    from ml.ct.data import build_arrays
    from ml.ct.preprocess import CTPreprocessing
    from ml.ct.segmenter import PostProcessing
    from ml.ct.training import (
        CTTrainConfig,
        base_card,
        build_model,
        compile_model,
        fit_ct,
        save_model,
    )
    from ml.models.artifacts import write_card

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    config = CTTrainConfig(
        width=TINY_SETTINGS["width"],
        depth=TINY_SETTINGS["depth"],
        epochs=TINY_SETTINGS["epochs"],
        batch_size=TINY_SETTINGS["batch_size"],
        seed=TINY_SETTINGS["seed"],
        medseg_repeats=1,
        zenodo_per_epoch=100,
        n_bootstrap=0,
    )
    spec = CTPreprocessing.from_dict(config.preprocessing)
    samples = zenodo_samples(fixtures / "zenodo") + medseg_samples(fixtures / "medseg")
    arrays = build_arrays(samples, spec)
    model = build_model(config, spec.size)
    compile_model(model, config.learning_rate)
    training = fit_ct(model, arrays, None, config, progress=False)
    save_model(model, config, spec.size, artifact)
    card = base_card(
        TINY_NAME,
        model,
        artifact,
        config,
        "Plumbing model for tests, trained for 2 epochs on the 16 fixture slices of "
        "tests/fixtures/ct. Not a segmentation model; not evaluated.",
    )
    # No lung-area bar, so that the plumbing model "finds" lungs on most fixtures; Grad-CAM
    # on the last decoder block: at the default (deeper) layer the positive part of this
    # barely trained model's map is empty.
    card["postprocessing"] = {
        **asdict(PostProcessing()),
        "min_lung_fraction": 0.0,
        "min_lung_confidence": 0.0,
        "gradcam_layer": "dec0_relu2",
    }
    card["training_data"] = {
        "fixtures": "tests/fixtures/ct",
        "fixtures_sha256": digest,
        "slices": len(samples),
    }
    card["training"] = training
    write_card(artifact, card)
    log.info("wrote %s in %.1f s", artifact, training["seconds"])
    return artifact


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("var/ct-tiny"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(build_tiny_ct_model(args.out))


if __name__ == "__main__":
    main()

"""A tiny generator, trained once per test run on the committed fixture images (one
epoch at 32 px, ~30 s) and shared by xdist workers through a file lock."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import IMAGES, fixture_manifest


def train_tiny_generator(root: Path) -> Path:
    artifact = root / "out" / "generator.keras"
    if artifact.is_file():
        return artifact
    from ml.generate.data import CLASSIFIER, load_gan_data
    from ml.generate.training import GanConfig, train_generator
    from ml.models.artifacts import read_card

    labels = root / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient", "source", "split"])
        seen: dict[str, int] = {}
        for row in fixture_manifest():
            k = seen.get(row["label"], 0)
            seen[row["label"]] = k + 1
            split = "test" if k < 2 else "val" if k == 2 else "train"
            writer.writerow(
                [IMAGES / row["path"], row["label"], row["patient"], row["source"], split]
            )
    data = load_gan_data(
        [labels], classifier_card=read_card(CLASSIFIER), size=32, cache=None, progress=False
    )
    config = GanConfig(size=32, width=8, d_width=8, batch_size=4, epochs=1)
    return train_generator(
        data, root / "out", config, work_dir=root / "work", progress=False
    ).artifact


@pytest.fixture(scope="session")
def gan_tiny_model(tmp_path_factory) -> Path:
    import fcntl

    root = tmp_path_factory.getbasetemp().parent / "gan-tiny"
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return train_tiny_generator(root)


@pytest.fixture
def generator_version(db, gan_tiny_model):
    from apps.generator.services import register_generator

    version, _ = register_generator(gan_tiny_model)
    return version

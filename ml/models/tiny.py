"""Train the tiny bootstrap model that the platform bundles.

Tests need a real Keras model whose answers on the fixture images are known,
without ../shared/datasets. This trains the compact CNN for a few seconds on
all 18 committed fixture images (``tests/fixtures/images/manifest.csv``) and
writes ``.keras`` + model card (and the ``.tflite`` the inference queue runs, with its
record). It is a plumbing model, not a diagnostic one:
its card says so. The shipped default model is trained by ``make train``.

    python -m ml.models.tiny --manifest tests/fixtures/images/manifest.csv \
        --out tests/fixtures/models/cxr-tiny.keras
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.data.labels import CLASSES
from ml.data.preprocess import PreprocessSpec, open_image, preprocess
from ml.models.architectures import build_compact_cnn
from ml.models.artifacts import sha256_file, write_card

log = logging.getLogger(__name__)


def load_manifest(manifest: Path, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    with manifest.open(newline="") as fh:
        for row in csv.DictReader(fh):
            image = open_image(manifest.parent / row["path"])
            images.append(preprocess(image, spec))
            labels.append(CLASSES.index(row["label"]))
    return np.stack(images), np.asarray(labels, dtype=np.int32)


def train_bootstrap(
    manifest: Path,
    out: Path,
    *,
    input_size: int = 128,
    epochs: int = 40,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict[str, Any]:
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    spec = PreprocessSpec(input_size=input_size)
    x, y = load_manifest(manifest, spec)
    model = build_compact_cnn(input_size=input_size, width=8, seed=seed)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(x, y, epochs=epochs, batch_size=6, shuffle=True, verbose=0)
    seconds = time.perf_counter() - start
    # Accuracy as served (inference mode, BN moving statistics), not as trained.
    served = np.argmax(model(x, training=False).numpy(), axis=1)
    served_accuracy = float(np.mean(served == y))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    card: dict[str, Any] = {
        "name": out.stem,
        "architecture": "compact_cnn",
        "classes": list(CLASSES),
        "preprocessing": spec.to_dict(),
        "purpose": (
            "Bootstrap model trained on the 18 fixture images so the platform serves a real "
            "Keras model from its first start. Not a diagnostic model; not evaluated on "
            "held-out data."
        ),
        "training_data": {
            "manifest": manifest.name,
            "manifest_sha256": sha256_file(manifest),
            "images": len(y),
        },
        "hyperparameters": {"epochs": epochs, "batch_size": 6, "lr": lr, "width": 8, "seed": seed},
        "metrics": {
            "train_accuracy_last_epoch": float(history.history["accuracy"][-1]),
            "train_accuracy_inference_mode": served_accuracy,
        },
        "training_seconds": round(seconds, 2),
        "sha256": sha256_file(out),
        "framework": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    write_card(out, card)
    # The LiteRT file beside it, so registering it in tests needs no conversion.
    from ml.serving.runtime import convert_to_lite

    convert_to_lite(out)
    log.info("wrote %s (sha256 %s) in %.1f s", out, card["sha256"], seconds)
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=Path("tests/fixtures/images/manifest.csv"))
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/models/cxr-tiny.keras"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    train_bootstrap(args.manifest, args.out, epochs=args.epochs, lr=args.lr, seed=args.seed)


if __name__ == "__main__":
    main()

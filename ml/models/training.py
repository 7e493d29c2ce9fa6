"""Training: records -> arrays -> tf.data -> Keras fit -> artifact, card and report.

One entry point, :func:`train`, used by the CLI (``python -m ml train``), the
study, and the platform's training task. Reproducible: the same data, config
and seed give the same split and (with op determinism) the same weights.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from ml.data.labels import CLASSES
from ml.data.loaders import LABEL_MAPPING_VERSION, Dataset, Record
from ml.data.preprocess import PreprocessSpec, open_image, preprocess
from ml.data.splits import patients_in_several_splits, split_records
from ml.models.architectures import build_model
from ml.models.artifacts import sha256_file, write_card

log = logging.getLogger(__name__)

ProgressHook = Callable[[dict], None]


@dataclass
class TrainConfig:
    architecture: str = "compact_cnn"
    input_size: int = 128
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    width: int = 16
    augment: bool = True
    class_weights: bool = True
    patience: int = 6
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_level: str = "patient"
    train_fraction_used: float = 1.0  # share of the training split used (data-size study)
    seed: int = 0
    n_bootstrap: int = 1000
    gradcam_animation: bool = True  # <name>.gradcam.gif: Grad-CAM of 3 val images per epoch
    extra: dict = field(default_factory=dict)

    def model_kwargs(self) -> dict:
        return {"width": self.width} if self.architecture == "compact_cnn" else {}


def load_arrays(
    records: Sequence[Record], spec: PreprocessSpec, *, workers: int = 2, progress: bool = True
) -> np.ndarray:
    """Preprocess every image with the serving function (``ml.data.preprocess``)."""

    def one(record: Record) -> np.ndarray:
        return preprocess(open_image(record.path), spec)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(
            tqdm(
                pool.map(one, records),
                total=len(records),
                desc="preprocess",
                unit="img",
                disable=not progress,
            )
        )
    return np.stack(arrays).astype(np.float32)


def augmenter(seed: int) -> keras.Sequential:
    """Small geometric and contrast jitter. No horizontal flip: the heart is on the left."""
    return keras.Sequential(
        [
            keras.layers.RandomRotation(0.04, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
            keras.layers.RandomContrast(0.15, seed=seed + 3),
        ],
        name="augment",
    )


def make_dataset(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, training: bool, augment: bool, seed: int
) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if training and augment:
        layer = augmenter(seed)
        ds = ds.map(
            lambda a, b: (tf.clip_by_value(layer(a, training=True), 0.0, 1.0), b),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.prefetch(tf.data.AUTOTUNE)


class ProgressCallback(keras.callbacks.Callback):
    """A tqdm bar per epoch plus an optional hook (the platform stores progress rows)."""

    def __init__(self, steps: int, epochs: int, hook: ProgressHook | None, show: bool) -> None:
        super().__init__()
        self.steps, self.epochs, self.hook, self.show = steps, epochs, hook, show
        self.bar: tqdm | None = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.bar = tqdm(
            total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", disable=not self.show
        )

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{(logs or {}).get('loss', float('nan')):.3f}")
        if self.hook:
            self.hook(
                {
                    "epoch": self.epoch + 1,
                    "epochs": self.epochs,
                    "batch": batch + 1,
                    "batches": self.steps,
                }
            )

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
        logs = {k: float(v) for k, v in (logs or {}).items()}
        log.info("epoch %d: %s", epoch + 1, json.dumps(logs))
        if self.hook:
            self.hook(
                {
                    "epoch": epoch + 1,
                    "epochs": self.epochs,
                    "batch": self.steps,
                    "batches": self.steps,
                    "logs": logs,
                }
            )


def balanced_class_weight(y: np.ndarray) -> dict[int, float]:
    """Keras ``class_weight`` for the classes present in ``y``, "balanced" as in scikit-learn."""
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


def predict_batches(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Direct model calls in batches (no ``model.predict`` pipeline overhead)."""
    call = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    outputs = [
        call(tf.constant(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, len(CLASSES)), np.float32)


@dataclass
class TrainResult:
    artifact: Path
    card: dict
    metrics: dict
    report_dir: Path


def train(
    dataset: Dataset,
    out_dir: Path,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    hook: ProgressHook | None = None,
    name: str = "model",
    splits: Sequence[str] | None = None,
) -> TrainResult:
    """Split, train, evaluate on the test split, and write artifact + card + report.

    ``splits`` (one of train/val/test per record) replaces the computed split:
    the platform passes a dataset snapshot's frozen split so the test images
    stay the same across model versions.

    With ``config.gradcam_animation`` it also writes ``NAME.gradcam.gif`` (Grad-CAM
    of up to three fixed validation images after every epoch, see
    :mod:`ml.explain.animation`), named in the card as ``training_animation``; it
    draws no random numbers, so the trained weights are the same either way.
    """
    from ml.models.evaluation import evaluate_predictions, write_report

    config = config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    records = dataset.records
    split_source = "given" if splits is not None else config.split_level
    if splits is None:
        splits = split_records(
            records,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed,
            level=config.split_level,
        )
    elif len(splits) != len(records) or not set(splits) <= {"train", "val", "test"}:
        raise ValueError("splits must name train, val or test for every record.")
    leaked = patients_in_several_splits(records, splits)
    if config.split_level == "patient" and leaked:
        raise RuntimeError(f"patient-level split leaked {len(leaked)} patients")
    index = {s: [i for i, name in enumerate(splits) if name == s] for s in ("train", "val", "test")}
    if config.train_fraction_used < 1.0:
        rng = np.random.default_rng(config.seed)
        keep = max(len(CLASSES), round(len(index["train"]) * config.train_fraction_used))
        index["train"] = sorted(rng.choice(index["train"], size=keep, replace=False).tolist())
    for split_name, idx in index.items():
        if not idx:
            raise ValueError(
                f"The {split_name} split is empty: too little data for these fractions."
            )

    spec = PreprocessSpec(input_size=config.input_size)
    x_all = load_arrays(records, spec, progress=progress)
    y_all = np.array([CLASSES.index(r.label) for r in records], dtype=np.int32)
    x_train, y_train = x_all[index["train"]], y_all[index["train"]]
    x_val, y_val = x_all[index["val"]], y_all[index["val"]]
    x_test = x_all[index["test"]]

    class_weight = balanced_class_weight(y_train) if config.class_weights else None

    model = build_model(
        config.architecture, config.input_size, seed=config.seed, **config.model_kwargs()
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train_ds = make_dataset(
        x_train,
        y_train,
        batch_size=config.batch_size,
        training=True,
        augment=config.augment,
        seed=config.seed,
    )
    val_ds = make_dataset(
        x_val, y_val, batch_size=config.batch_size, training=False, augment=False, seed=config.seed
    )
    steps = int(np.ceil(len(x_train) / config.batch_size))
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2), min_lr=1e-5
        ),
        ProgressCallback(steps, config.epochs, hook, progress),
    ]
    animation = None
    if config.gradcam_animation:
        from ml.explain.animation import GradCAMAnimation, pick_images

        shown = pick_images(y_val, len(CLASSES), sources=[records[i].source for i in index["val"]])
        animation = GradCAMAnimation(
            x_val[shown], y_val[shown], CLASSES, out_dir / f"{name}.gradcam.gif"
        )
        callbacks.append(animation)
    start = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        class_weight=class_weight,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=0,
    )
    seconds = time.perf_counter() - start
    epochs_run = len(history.history["loss"])

    probs = predict_batches(model, x_test)
    test_records = [records[i] for i in index["test"]]
    y_true = [r.label for r in test_records]
    sources = [r.source for r in test_records]
    metrics = evaluate_predictions(
        y_true, probs, CLASSES, sources=sources, n_bootstrap=config.n_bootstrap, seed=config.seed
    )
    report_dir = out_dir / "report"
    write_report(metrics, y_true, probs, CLASSES, report_dir, title=f"{name}: test split")

    artifact = out_dir / f"{name}.keras"
    model.save(artifact)
    with (out_dir / "splits.csv").open("w") as fh:
        fh.write("key,patient,label,source,split\n")
        for record, split_name in zip(records, splits, strict=True):
            fh.write(f"{record.key},{record.patient},{record.label},{record.source},{split_name}\n")

    card = {
        "name": name,
        "architecture": config.architecture,
        "classes": list(CLASSES),
        "preprocessing": spec.to_dict(),
        "label_mapping_version": LABEL_MAPPING_VERSION,
        "data": {
            **dataset.summary(),
            "split": {
                "level": config.split_level,
                "source": split_source,
                "seed": config.seed,
                "val_fraction": config.val_fraction,
                "test_fraction": config.test_fraction,
                "counts": {k: len(v) for k, v in index.items()},
            },
        },
        "hyperparameters": asdict(config),
        "training": {
            "seconds": round(seconds, 1),
            "epochs_run": epochs_run,
            "seconds_per_epoch": round(seconds / max(epochs_run, 1), 2),
            "best_val_loss": float(min(history.history["val_loss"])),
        },
        "metrics": {
            "test_macro_f1": metrics["macro_f1"],
            "test_macro_f1_ci": metrics["macro_f1_ci"],
            "test_accuracy": metrics["accuracy"],
            "test_per_class": metrics["per_class"],
            "test_roc_auc_macro": metrics["roc_auc_macro"],
            "test_ece": metrics["ece"],
        },
        "framework": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "sha256": sha256_file(artifact),
    }
    if animation is not None and animation.written:
        card["training_animation"] = animation.path.name
    write_card(artifact, card)
    log.info("wrote %s: test macro-F1 %.3f", artifact, metrics["macro_f1"])
    return TrainResult(artifact=artifact, card=card, metrics=metrics, report_dir=report_dir)


def classifier_probabilities(
    classifier, records: Sequence[Record], *, progress: bool = False, batch_size: int = 64
) -> np.ndarray:
    """Probabilities of a loaded ``ml.serving.classifier.Classifier`` for records, in batches."""
    x = load_arrays(records, classifier.spec, progress=progress)
    return np.concatenate(
        [classifier.predict_array(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )


def evaluate_classifier(
    classifier, records: Sequence[Record], *, n_bootstrap: int = 1000, progress: bool = False
) -> dict:
    """Metrics of a loaded ``Classifier`` (ml.serving) on labelled records, per source too."""
    from ml.models.evaluation import evaluate_predictions

    probs = classifier_probabilities(classifier, records, progress=progress)
    return evaluate_predictions(
        [r.label for r in records],
        probs,
        classifier.classes,
        sources=[r.source for r in records],
        n_bootstrap=n_bootstrap,
    )

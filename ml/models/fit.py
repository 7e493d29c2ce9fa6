"""The one fit loop, shared by ``ml classifier train``, ``ml study run`` and the platform's
training task.

What it does, each part switchable and recorded on the card through ``TrainConfig``:

* **class weights** ("balanced", scikit-learn) or **sampling balanced over source x
  class**: each class gets a third of every batch and, within a class, every source
  that has it an equal share, so no (source, class) cell dominates the gradient;
* **augmentation**: the small geometric/contrast jitter of v1 (``augment``), or the
  acquisition augmentation (``acquisition_augment``) that destroys cues of how and
  where an image was made: random resized crops inside the lung frame, gamma,
  contrast and brightness, blur or sharpening, noise, JPEG re-compression and
  down-then-up sampling, each with its own random strength per image;
* **"right for the right reasons"** (Ross et al. 2017, ``lung_penalty`` = lambda):
  the loss gains lambda times the share of the input-gradient energy of the summed
  log-probabilities that lies outside the lung mask;
* early stopping on validation loss (best weights restored), learning rate halved
  on plateaus, seeded and deterministic (op determinism), a progress bar and a hook.

The segmentation models (the lung U-Net, the CT U-Net) score their validation split with
Dice, not a Keras loss, and draw fresh augmented samples each epoch: they train through
:func:`fit_by_epoch`, the same early-stopping loop one epoch at a time, where each model
says only what one epoch trains on and how it is scored. The GAN (``ml.generate``)
trains two networks against each other and keeps its own loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from ml.models.arrays import Arrays

log = logging.getLogger(__name__)

ProgressHook = Callable[[dict[str, Any]], None]


def balanced_class_weight(y: np.ndarray) -> dict[int, float]:
    """Keras ``class_weight`` for the classes present in ``y``, "balanced" as in scikit-learn."""
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


def cell_weights(y: np.ndarray, sources: Sequence[str]) -> dict[tuple[str, int], float]:
    """Sampling share of every (source, class) cell: classes equal, sources equal within."""
    cells = sorted({(s, int(c)) for s, c in zip(sources, y, strict=True)})
    classes = sorted({c for _, c in cells})
    shares = {}
    for source, label in cells:
        n_sources = sum(1 for _, c in cells if c == label)
        shares[(source, label)] = 1.0 / len(classes) / n_sources
    return shares


def balanced_sample_weights(y: np.ndarray, sources: Sequence[str]) -> np.ndarray:
    """Per-image weights that give each cell its :func:`cell_weights` share (validation loss)."""
    shares = cell_weights(y, sources)
    counts: dict[tuple[str, int], int] = {}
    for s, c in zip(sources, y, strict=True):
        counts[(s, int(c))] = counts.get((s, int(c)), 0) + 1
    weights = np.array(
        [
            shares[(s, int(c))] * len(y) / counts[(s, int(c))]
            for s, c in zip(sources, y, strict=True)
        ],
        dtype=np.float32,
    )
    return weights


def class_balanced_weights(y: np.ndarray) -> np.ndarray:
    """Per-image weights giving each class present the same total weight."""
    weights = balanced_class_weight(y)
    return np.array([weights[int(c)] for c in y], dtype=np.float32)


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


def _gaussian_blur(image: tf.Tensor, sigma: float = 1.0) -> tf.Tensor:
    radius = 2
    grid = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(grid**2) / (2.0 * sigma**2))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = image.shape[-1]
    kx = tf.tile(tf.reshape(kernel, (1, -1, 1, 1)), (1, 1, channels, 1))
    ky = tf.tile(tf.reshape(kernel, (-1, 1, 1, 1)), (1, 1, channels, 1))
    batch = image[tf.newaxis]
    batch = tf.nn.depthwise_conv2d(batch, kx, (1, 1, 1, 1), "SAME")
    batch = tf.nn.depthwise_conv2d(batch, ky, (1, 1, 1, 1), "SAME")
    return batch[0]


def acquisition_augment(
    image: tf.Tensor, masks: tf.Tensor, seed: tf.Tensor, *, mask_outside: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """Augment one image (S, S, C) and its masks (S, S, 2: lungs, visible) with stateless
    randomness from ``seed`` (shape (2,), int64), so a run is reproducible."""
    size = image.shape[0]
    seeds = tf.random.experimental.stateless_split(seed, 10)

    def uniform(i: int, low: float, high: float) -> tf.Tensor:
        return tf.random.stateless_uniform((), seeds[i], low, high)

    # Random resized crop inside the lung frame (image and masks alike).
    scale = uniform(0, 0.75, 1.0)
    aspect = uniform(1, 0.9, 1.1)
    height = tf.minimum(scale * aspect, 1.0)
    width = tf.minimum(scale / aspect, 1.0)
    top = uniform(2, 0.0, 1.0) * (1.0 - height)
    left = uniform(3, 0.0, 1.0) * (1.0 - width)
    box = tf.stack([top, left, top + height, left + width])[tf.newaxis]
    stacked = tf.concat([image, masks], axis=-1)[tf.newaxis]
    stacked = tf.image.crop_and_resize(stacked, box, [0], (size, size))[0]
    channels = image.shape[-1]
    image, masks = stacked[..., :channels], tf.cast(stacked[..., channels:] > 0.5, tf.float32)
    # Down-then-up sampling (half the images): resolution differs between sources.
    factor = uniform(4, 0.55, 1.0)
    small = tf.cast(tf.round(factor * size), tf.int32)
    resampled = tf.image.resize(tf.image.resize(image, (small, small)), (size, size))
    image = tf.where(uniform(5, 0.0, 1.0) < 0.5, resampled, image)
    # Blur (s < 0) or sharpen (s > 0).
    amount = uniform(6, -0.7, 1.0)
    image = image + amount * (image - _gaussian_blur(image))
    image = tf.clip_by_value(image, 0.0, 1.0)
    # Gamma, contrast, brightness.
    image = tf.pow(image + 1e-6, tf.exp(uniform(7, -0.3, 0.3)))
    mean = tf.reduce_mean(image)
    image = (image - mean) * uniform(8, 0.8, 1.25) + mean + uniform(9, -0.06, 0.06)
    noise_seeds = tf.random.experimental.stateless_split(seeds[9], 3)
    sigma = tf.random.stateless_uniform((), noise_seeds[0], 0.0, 0.025)
    image = image + sigma * tf.random.stateless_normal(tf.shape(image), noise_seeds[1])
    image = tf.clip_by_value(image, 0.0, 1.0)
    # JPEG re-compression at a random quality.
    jpeg = tf.image.stateless_random_jpeg_quality(image, 50, 95, noise_seeds[2])
    image = tf.reshape(jpeg, tf.shape(image))
    if mask_outside:
        image = image * masks[..., 1:2]
    return tf.clip_by_value(image, 0.0, 1.0), masks


@dataclass
class FitData:
    """One split's arrays for the fit loop."""

    arrays: Arrays
    y: np.ndarray  # int class indices
    sources: list[str]
    patients: list[str] | None = None  # groups the source probe's folds


@dataclass
class FitSettings:
    """The parts of ``TrainConfig`` the fit loop reads (the study builds one too)."""

    epochs: int
    batch_size: int
    learning_rate: float
    patience: int
    seed: int
    augment: bool = True
    class_weights: bool = True
    balanced_sampling: bool = False
    acquisition_augment: bool = False
    lung_penalty: float = 0.0
    penalty_on: str = "gradient"  # "gradient" (input gradients) or "gradcam" (last_conv)
    mask_outside: bool = False
    lr_schedule: bool = True  # halve on plateau (the bundled models' procedure)
    min_epochs: int = 0  # early stopping (and the best weights) only from this epoch on


def _masks(data: FitData) -> np.ndarray:
    """(n, S, S, 2) float: lung mask, visible region (all ones when not masked)."""
    x = data.arrays.x
    lungs = data.arrays.lungs if data.arrays.lungs is not None else np.ones(x.shape[:3], bool)
    visible = data.arrays.visible if data.arrays.visible is not None else np.ones(x.shape[:3], bool)
    return np.stack([lungs, visible], axis=-1).astype(np.float32)


def _pack(image: tf.Tensor, masks: tf.Tensor, penalty: bool) -> tf.Tensor:
    """Model input: the image, plus the lung mask as a last channel for the penalty model."""
    return tf.concat([image, masks[..., :1]], axis=-1) if penalty else image


def training_dataset(data: FitData, settings: FitSettings) -> tuple[tf.data.Dataset, int]:
    """The training pipeline and its steps per epoch."""
    seed = settings.seed
    penalty = settings.lung_penalty > 0
    n = len(data.y)
    steps = int(np.ceil(n / settings.batch_size))
    masks = _masks(data)
    if settings.balanced_sampling:
        shares = cell_weights(data.y, data.sources)
        parts, weights = [], []
        for k, ((source, label), share) in enumerate(sorted(shares.items())):
            idx = [
                i
                for i, (s, c) in enumerate(zip(data.sources, data.y, strict=True))
                if s == source and c == label
            ]
            part = tf.data.Dataset.from_tensor_slices((data.arrays.x[idx], masks[idx], data.y[idx]))
            parts.append(part.shuffle(len(idx), seed=seed + k).repeat())
            weights.append(share)
        ds = tf.data.Dataset.sample_from_datasets(parts, weights=weights, seed=seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices((data.arrays.x, masks, data.y)).cache()
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    if settings.acquisition_augment:
        randoms = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip((ds, randoms)).map(
            lambda item, s: (
                *acquisition_augment(item[0], item[1], s, mask_outside=settings.mask_outside),
                item[2],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    ds = ds.batch(settings.batch_size)
    if settings.augment and not settings.acquisition_augment:
        layer = augmenter(seed)
        ds = ds.map(
            lambda a, m, b: (tf.clip_by_value(layer(a, training=True), 0.0, 1.0), m, b),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    ds = ds.map(lambda a, m, b: (_pack(a, m, penalty), b))
    return ds.prefetch(tf.data.AUTOTUNE), steps


def validation_dataset(data: FitData, settings: FitSettings) -> tf.data.Dataset:
    penalty = settings.lung_penalty > 0
    masks = _masks(data)
    x = data.arrays.x
    inputs = np.concatenate([x, masks[..., :1]], axis=-1) if penalty else x
    if settings.balanced_sampling:
        # Classes weighted equally, sources not: weighting every source x class cell
        # equally puts a ninth of the loss on the two or three covid-chestxray normals of
        # the validation split, and early stopping then follows their noise.
        weights = class_balanced_weights(data.y)
        ds = tf.data.Dataset.from_tensor_slices((inputs, data.y, weights))
    else:
        ds = tf.data.Dataset.from_tensor_slices((inputs, data.y))
    return ds.batch(settings.batch_size).cache().prefetch(tf.data.AUTOTUNE)


class LungPenaltyModel(keras.Model):  # type: ignore[misc]  # Keras ships no types
    """Wraps a classifier for training with the "right for the right reasons" penalty.

    Its input is the image plus the lung mask as a last channel; the wrapped ``net``
    (what is saved and served) sees the image only.
    """

    def __init__(self, net: keras.Model, lam: float, on: str = "gradient", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if on not in ("gradient", "gradcam"):
            raise ValueError(f"penalty_on must be gradient or gradcam, not {on!r}")
        self.net = net
        self.lam = float(lam)
        self.on = on
        self.outside_tracker = keras.metrics.Mean(name="outside_share")
        if on == "gradcam":
            self.cam_model = keras.Model(
                net.inputs, [net.get_layer("last_conv").output, net.outputs[0]]
            )

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.net(inputs[..., :-1], training=training)

    def _gradient_share(self, image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Share of the input-gradient energy of the summed log-probabilities outside."""
        with tf.GradientTape() as inner:
            inner.watch(image)
            probs = self.net(image, training=True)
            summed = tf.reduce_sum(tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0)))
        energy = tf.square(inner.gradient(summed, image))
        total = tf.reduce_sum(energy, axis=[1, 2, 3]) + 1e-12
        return tf.reduce_sum(energy * (1.0 - mask), axis=[1, 2, 3]) / total, probs

    def _gradcam_share(self, image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Share of the Grad-CAM (predicted class, ``last_conv``) mass outside the lungs."""
        with tf.GradientTape() as inner:
            conv, probs = self.cam_model(image, training=True)
            target = tf.one_hot(tf.argmax(probs, axis=-1), tf.shape(probs)[-1])
            score = tf.reduce_sum(probs * tf.stop_gradient(target))
        grads = inner.gradient(score, conv)
        weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1))
        small = tf.image.resize(mask, tf.shape(cam)[1:3], method="area")[..., 0]
        total = tf.reduce_sum(cam, axis=[1, 2]) + 1e-8
        return tf.reduce_sum(cam * (1.0 - small), axis=[1, 2]) / total, probs

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        image, mask = x[..., :-1], x[..., -1:]
        with tf.GradientTape() as tape:
            if self.on == "gradcam":
                outside, probs = self._gradcam_share(image, mask)
            else:
                outside, probs = self._gradient_share(image, mask)
            share = tf.reduce_mean(outside)
            loss = self.compute_loss(x=image, y=y, y_pred=probs, sample_weight=sample_weight)
            loss = loss + self.lam * share
        variables = self.net.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self.outside_tracker.update_state(share)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            elif metric is not self.outside_tracker:
                metric.update_state(y, probs, sample_weight=sample_weight)
        return {m.name: m.result() for m in self.metrics}


class ProgressCallback(keras.callbacks.Callback):  # type: ignore[misc]  # Keras ships no types
    """A tqdm bar per epoch plus an optional hook (the platform stores progress rows)."""

    def __init__(self, steps: int, epochs: int, hook: ProgressHook | None, show: bool) -> None:
        super().__init__()
        self.steps, self.epochs, self.hook, self.show = steps, epochs, hook, show
        self.bar: tqdm[Any] | None = None
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch
        self.bar = tqdm(
            total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", disable=not self.show
        )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
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

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
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


@dataclass
class FitResult:
    history: dict[str, list[float]]
    seconds: float
    epochs_run: int
    # The epoch (1-based) whose weights were kept: the lowest validation loss from
    # ``min_epochs`` on (early stopping restores it).
    best_epoch: int = 0

    @property
    def best_val_loss(self) -> float:
        return float(min(self.history["val_loss"]))


def fit(
    net: keras.Model,
    train: FitData,
    val: FitData,
    settings: FitSettings,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    hook: ProgressHook | None = None,
    progress: bool = True,
) -> FitResult:
    """Compile and fit ``net`` in place (best validation weights restored)."""
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    model = (
        LungPenaltyModel(net, settings.lung_penalty, on=settings.penalty_on)
        if settings.lung_penalty > 0
        else net
    )
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train_ds, steps = training_dataset(train, settings)
    val_ds = validation_dataset(val, settings)
    use_class_weight = settings.class_weights and not settings.balanced_sampling
    class_weight = balanced_class_weight(train.y) if use_class_weight else None
    fit_callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=settings.patience,
            restore_best_weights=True,
            start_from_epoch=settings.min_epochs,
        ),
        ProgressCallback(steps, settings.epochs, hook, progress),
        *callbacks,
    ]
    if settings.lr_schedule:
        fit_callbacks.insert(
            1,
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=0.5,
                patience=max(1, settings.patience // 2),
                min_lr=1e-5,
            ),
        )
    start = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=settings.epochs,
        steps_per_epoch=steps,
        class_weight=class_weight,
        callbacks=fit_callbacks,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=0,
    )
    seconds = time.perf_counter() - start
    values = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    losses = values.get("val_loss") or []
    start = min(settings.min_epochs, max(len(losses) - 1, 0))
    best = start + int(np.argmin(losses[start:])) + 1 if losses else 0
    return FitResult(
        history=values, seconds=seconds, epochs_run=len(values["loss"]), best_epoch=best
    )


@dataclass
class EpochFit:
    """What :func:`fit_by_epoch` did. ``history`` has one record per epoch run."""

    history: list[dict[str, Any]]
    best_epoch: int  # 1-based; its weights are the model's when the loop returns
    best_score: float
    stopped: str  # "epochs", "early stop (...)" or "time budget (...)"
    seconds: float


# One epoch: (0-based epoch, the learning rate now) -> (its record, its validation score).
EpochStep = Callable[[int, float], tuple[dict[str, Any], float]]


def fit_by_epoch(
    model: keras.Model,
    run_epoch: EpochStep,
    *,
    epochs: int,
    patience: int,
    learning_rate: float,
    plateau: int | None = None,
    max_minutes: float | None = None,
    desc: str = "fit",
    postfix: Sequence[str] = ("loss",),
    log_level: int = logging.DEBUG,
    progress: bool = True,
) -> EpochFit:
    """Train ``model`` one epoch at a time, keeping the weights of the epoch with the best
    validation score (higher is better) and stopping after ``patience`` epochs without a
    better one. ``run_epoch`` trains one epoch and scores it; its record gets ``epoch``
    in front and ``seconds`` behind. With ``plateau``, the learning rate (of the model's
    optimizer) halves after every ``plateau`` epochs without a better score; with
    ``max_minutes``, training stops after the epoch that passes that budget. The model
    holds the best epoch's weights when this returns."""
    started = time.perf_counter()
    history: list[dict[str, Any]] = []
    best: tuple[float, int, list[np.ndarray]] = (-1.0, 0, model.get_weights())
    since_best = 0
    stopped = "epochs"
    bar = tqdm(range(epochs), desc=desc, disable=not progress)
    for epoch in bar:
        epoch_start = time.perf_counter()
        record, score = run_epoch(epoch, learning_rate)
        record = {
            "epoch": epoch + 1,
            **record,
            "seconds": round(time.perf_counter() - epoch_start, 1),
        }
        history.append(record)
        bar.set_postfix({key: record[key] for key in postfix if key in record})
        log.log(log_level, "%s epoch %s", desc, record)
        if score > best[0]:
            best, since_best = (score, epoch + 1, model.get_weights()), 0
        else:
            since_best += 1
            if since_best >= patience:
                stopped = f"early stop (no better validation score for {patience} epochs)"
                log.info("%s: early stop at epoch %d (best %d)", desc, epoch + 1, best[1])
                break
            if plateau and since_best % plateau == 0:
                learning_rate /= 2
                model.optimizer.learning_rate.assign(learning_rate)
        minutes = (time.perf_counter() - started) / 60
        if max_minutes is not None and minutes >= max_minutes:
            stopped = f"time budget ({max_minutes} min)"
            break
    model.set_weights(best[2])
    return EpochFit(
        history=history,
        best_epoch=best[1],
        best_score=best[0],
        stopped=stopped,
        seconds=round(time.perf_counter() - started, 1),
    )


def predict_batches(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Direct model calls in batches (no ``model.predict`` pipeline overhead)."""
    call = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    outputs = [
        call(tf.constant(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)
    ]
    if outputs:
        return np.concatenate(outputs)
    return np.zeros((0, model.output_shape[-1]), np.float32)

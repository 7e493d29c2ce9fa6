"""Training the generator: a checkpointed, resumable loop; the checkpoint chosen on val.

``train_generator`` trains on the ``train`` split only, one discriminator and one
generator step per batch (hinge loss, DiffAugment on both sides of the discriminator),
and keeps an exponential moving average of the generator's weights. Every epoch it
writes a checkpoint (all weights, optimizer states and the epoch) to a work folder under
``var/cache/gan/`` and a frame of fixed-noise samples per class; every
``snapshot_every`` epochs a copy of the averaged generator. Run again with the same
settings, it resumes from the last checkpoint (every random number is drawn from the
seed and the step, so a resumed run draws what an uninterrupted one would have).

At the end the snapshot whose samples are closest to the **validation** split (mean
per-class Frechet distance on the classifier's features) is bundled as
``generator.keras`` with ``generator.card.json`` and ``generator.fixed-noise.gif``.
The test split is not looked at here (``python -m ml generate evaluate`` reports it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.data.labels import CLASSES
from ml.generate.data import SNAP, GanData

log = logging.getLogger(__name__)

NAME = "generator"
GIF_NAME = f"{NAME}.fixed-noise.gif"
GIF_TILE = 64
GIF_MAX_FRAMES = 31


@dataclass
class GanConfig:
    size: int = 64
    width: int = 32  # generator: 8 x width channels at 4x4, halved at every doubling
    d_width: int = 32  # discriminator: width channels at the first stride, doubled after
    z_dim: int = 128
    batch_size: int = 32
    epochs: int = 60
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta_1: float = 0.0
    beta_2: float = 0.9
    ema_decay: float = 0.995
    augment: str = "translation,cutout"  # DiffAugment policy ("" for none)
    seed: int = 0
    snapshot_every: int = 5  # epochs between copies of the averaged generator
    gif_per_class: int = 3  # fixed-noise samples per class in every GIF frame

    def key(self, data_hash: str) -> str:
        """Names the work folder: everything but the number of epochs (so a longer run
        with the same settings resumes the shorter one)."""
        settings = {k: v for k, v in asdict(self).items() if k != "epochs"}
        payload = json.dumps([settings, data_hash], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class GanResult:
    artifact: Path
    card: dict[str, Any]
    gif: Path | None


class GanTrainer:
    """The networks, optimizers and one compiled training step."""

    def __init__(self, config: GanConfig) -> None:
        import keras
        import tensorflow as tf

        from ml.generate.model import build_discriminator, build_generator, diff_augment

        self.config = config
        c = config
        self.generator = build_generator(c.size, c.width, len(CLASSES), c.z_dim, seed=c.seed)
        self.ema = build_generator(c.size, c.width, len(CLASSES), c.z_dim, seed=c.seed)
        self.ema.set_weights(self.generator.get_weights())
        self.discriminator = build_discriminator(c.size, c.d_width, len(CLASSES), seed=c.seed)
        self.opt_g = keras.optimizers.Adam(c.lr_g, beta_1=c.beta_1, beta_2=c.beta_2)
        self.opt_d = keras.optimizers.Adam(c.lr_d, beta_1=c.beta_1, beta_2=c.beta_2)
        self.opt_g.build(self.generator.trainable_variables)
        self.opt_d.build(self.discriminator.trainable_variables)
        g, d, ema = self.generator, self.discriminator, self.ema
        opt_g, opt_d = self.opt_g, self.opt_d
        decay = tf.constant(c.ema_decay, tf.float32)
        policy = c.augment
        z_dim = c.z_dim

        @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]  # TF is untyped
        def step(real: Any, labels: Any, seed: Any, warm: Any) -> Any:
            seeds = tf.random.experimental.stateless_split(seed, 5)
            n = tf.shape(real)[0]
            z = tf.random.stateless_normal((n, z_dim), seeds[0])
            with tf.GradientTape() as tape:
                fake = g([z, labels], training=True)
                d_real = d([diff_augment(real, seeds[1], policy), labels], training=True)
                d_fake = d([diff_augment(fake, seeds[2], policy), labels], training=True)
                loss_d = tf.reduce_mean(tf.nn.relu(1.0 - d_real)) + tf.reduce_mean(
                    tf.nn.relu(1.0 + d_fake)
                )
            grads = tape.gradient(loss_d, d.trainable_variables)
            opt_d.apply_gradients(zip(grads, d.trainable_variables, strict=True))
            z = tf.random.stateless_normal((n, z_dim), seeds[3])
            with tf.GradientTape() as tape:
                fake = g([z, labels], training=True)
                score = d([diff_augment(fake, seeds[4], policy), labels], training=True)
                loss_g = -tf.reduce_mean(score)
            grads = tape.gradient(loss_g, g.trainable_variables)
            opt_g.apply_gradients(zip(grads, g.trainable_variables, strict=True))
            # The average starts as a copy and only averages once the warm-up is over.
            rate = tf.where(warm, decay, 0.0)
            for e, w in zip(ema.trainable_variables, g.trainable_variables, strict=True):
                e.assign(rate * e + (1.0 - rate) * w)
            for e, w in zip(ema.non_trainable_variables, g.non_trainable_variables, strict=True):
                e.assign(w)
            return loss_d, loss_g, tf.reduce_mean(d_real), tf.reduce_mean(d_fake)

        self._step = step

    def step(
        self, real: np.ndarray, labels: np.ndarray, seed: tuple[int, int], warm: bool
    ) -> list[float]:
        import tensorflow as tf

        out = self._step(
            tf.constant(real),
            tf.constant(labels, tf.int32),
            tf.constant(seed, tf.int64),
            tf.constant(warm),
        )
        return [float(v) for v in out]

    # --- checkpoints ---------------------------------------------------------------------

    def _groups(self) -> dict[str, list[Any]]:
        return {
            "g": self.generator.variables,
            "d": self.discriminator.variables,
            "ema": self.ema.variables,
            "opt_g": self.opt_g.variables,
            "opt_d": self.opt_d.variables,
        }

    def save(self, path: Path, epoch: int) -> None:
        arrays = {
            f"{group}_{i}": np.asarray(v.numpy())
            for group, variables in self._groups().items()
            for i, v in enumerate(variables)
        }
        tmp = path.with_suffix(".tmp.npz")
        arrays["epoch"] = np.asarray(epoch)
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
        tmp.replace(path)

    def restore(self, path: Path) -> int:
        with np.load(path) as data:
            for group, variables in self._groups().items():
                for i, v in enumerate(variables):
                    v.assign(data[f"{group}_{i}"])
            return int(data["epoch"])

    def ema_weights(self) -> list[np.ndarray]:
        return [np.asarray(w) for w in self.ema.get_weights()]


def sample_model(model: Any, labels: np.ndarray, z: np.ndarray, batch: int = 64) -> np.ndarray:
    """Images in [0, 1] (background snapped) from a generator model, in batches."""
    import tensorflow as tf

    from ml.generate.model import to_unit

    out = [
        to_unit(
            model(
                [tf.constant(z[i : i + batch]), tf.constant(labels[i : i + batch], tf.int32)],
                training=False,
            )
        )
        for i in range(0, len(z), batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, 1, 1, 1), np.float32)


def fixed_noise(config: GanConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(config.seed + 1_000_003)
    n = config.gif_per_class * len(CLASSES)
    labels = np.repeat(np.arange(len(CLASSES)), config.gif_per_class).astype(np.int32)
    return rng.standard_normal((n, config.z_dim)).astype(np.float32), labels


def frame(images: np.ndarray, per_class: int, caption: str, tile: int = GIF_TILE) -> Any:
    """One GIF frame: a row per class of ``per_class`` samples, a caption on top."""
    from PIL import Image, ImageDraw

    from ml.data.labels import CLASS_DISPLAY

    label_w, caption_h = 96, 16
    width = label_w + per_class * tile
    height = caption_h + len(CLASSES) * tile
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), caption, fill=0)
    for row, name in enumerate(CLASSES):
        draw.text((4, caption_h + row * tile + tile // 2 - 6), CLASS_DISPLAY[name], fill=0)
        for col in range(per_class):
            array = images[row * per_class + col, ..., 0]
            tile_img = Image.fromarray(np.clip(array * 255 + 0.5, 0, 255).astype(np.uint8))
            tile_img = tile_img.resize((tile, tile), Image.Resampling.NEAREST)
            canvas.paste(tile_img, (label_w + col * tile, caption_h + row * tile))
    return canvas


def write_gif(frames: list[Any], path: Path, duration_ms: int = 300) -> Path:
    if not frames:
        raise ValueError("no frames to write")
    if len(frames) > GIF_MAX_FRAMES:  # evenly spaced, always the first and the last
        keep = np.unique(np.linspace(0, len(frames) - 1, GIF_MAX_FRAMES).round().astype(int))
        frames = [frames[i] for i in keep]
    durations = [duration_ms] * (len(frames) - 1) + [2000]  # hold the last frame
    frames[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=0,
        optimize=True,
    )
    return path


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def select_snapshot(
    snapshots: dict[int, Path],
    trainer: GanTrainer,
    data: GanData,
    features: Callable[[np.ndarray], np.ndarray],
    seed: int,
) -> tuple[int, list[dict[str, Any]]]:
    """The snapshot with the lowest mean per-class Frechet distance to the val split
    (as many samples per class as the val split has)."""
    from ml.generate.metrics import frechet_distance

    val = data.splits["val"]
    real = {c: features(val.of_class(c)) for c in range(len(CLASSES))}
    rng = np.random.default_rng(seed + 7)
    counts = [int((val.y == c).sum()) for c in range(len(CLASSES))]
    labels = np.repeat(np.arange(len(CLASSES)), counts).astype(np.int32)
    z = rng.standard_normal((len(labels), trainer.config.z_dim)).astype(np.float32)
    rows: list[dict[str, Any]] = []
    current = trainer.ema.get_weights()
    for epoch, path in sorted(snapshots.items()):
        with np.load(path) as weights:
            trainer.ema.set_weights([weights[f"w_{i}"] for i in range(len(weights.files))])
        fake = sample_model(trainer.ema, labels, z)
        per_class = {}
        for c, name in enumerate(CLASSES):
            if counts[c] >= 2:
                per_class[name] = frechet_distance(features(fake[labels == c]), real[c])
        if not per_class:  # too few val images per class (tiny data): pooled
            per_class["all"] = frechet_distance(features(fake), np.concatenate(list(real.values())))
        rows.append(
            {
                "epoch": epoch,
                "val_frechet_per_class": {k: round(v, 4) for k, v in per_class.items()},
                "val_frechet_mean": round(float(np.mean(list(per_class.values()))), 4),
            }
        )
    trainer.ema.set_weights(current)
    best = min(rows, key=lambda r: (r["val_frechet_mean"], -r["epoch"]))
    return int(best["epoch"]), rows


@dataclass
class _Run:
    """What one call of :func:`train_generator` did (for the card)."""

    work: Path
    batch: int
    steps: int
    start_epoch: int
    last_epoch: int
    history: list[dict[str, Any]]
    stopped_by_budget: bool
    load_start: list[float]


def _save_snapshot(work: Path, epoch: int, trainer: GanTrainer) -> None:
    weights = {f"w_{i}": w for i, w in enumerate(trainer.ema_weights())}
    np.savez(work / "snapshots" / f"epoch-{epoch:04d}.npz", **weights)  # type: ignore[arg-type]


def _one_epoch(
    trainer: GanTrainer, x: np.ndarray, y: np.ndarray, epoch: int, batch: int, progress: bool
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    config = trainer.config
    steps = len(y) // batch
    t0 = time.perf_counter()
    order = np.random.default_rng([config.seed, epoch]).permutation(len(y))
    losses = []
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{config.epochs}", disable=not progress)
    for s in bar:
        idx = order[s * batch : (s + 1) * batch]
        global_step = (epoch - 1) * steps + s
        out = trainer.step(x[idx], y[idx], (config.seed, global_step), global_step >= steps)
        losses.append(out)
        bar.set_postfix(d=f"{out[0]:.3f}", g=f"{out[1]:.3f}")
    mean = np.mean(losses, axis=0)
    return {
        "epoch": epoch,
        "loss_d": round(float(mean[0]), 4),
        "loss_g": round(float(mean[1]), 4),
        "d_real": round(float(mean[2]), 4),
        "d_fake": round(float(mean[3]), 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "load": _load(),
    }


def _train(
    trainer: GanTrainer, data: GanData, work: Path, max_minutes: float | None, progress: bool
) -> _Run:
    """The epochs still to run, checkpointed after each (resumes from ``work``)."""
    config = trainer.config
    train = data.splits["train"]
    x = (train.x * 2.0 - 1.0).astype(np.float32)
    y = train.y.astype(np.int32)
    batch = min(config.batch_size, len(y))
    if batch < config.batch_size:
        log.warning("fewer training images (%d) than the batch size: batch %d", len(y), batch)
    state, log_path = work / "state.npz", work / "log.jsonl"
    start_epoch = trainer.restore(state) if state.is_file() else 0
    history = []
    if start_epoch:
        log.info("resumed %s at epoch %d", work, start_epoch)
        lines = log_path.read_text().splitlines() if log_path.is_file() else []
        history = [json.loads(line) for line in lines if line.strip()]
        history = [h for h in history if h["epoch"] <= start_epoch]
    z_fixed, l_fixed = fixed_noise(config)
    if start_epoch == 0:
        first = sample_model(trainer.ema, l_fixed, z_fixed)
        frame(first, config.gif_per_class, "epoch 0 (untrained)").save(
            work / "frames" / "epoch-0000.png"
        )
    run = _Run(work, batch, len(y) // batch, start_epoch, start_epoch, history, False, _load())
    began = time.perf_counter()
    for epoch in range(start_epoch + 1, config.epochs + 1):
        row = _one_epoch(trainer, x, y, epoch, batch, progress)
        history.append(row)
        images = sample_model(trainer.ema, l_fixed, z_fixed)
        frame(images, config.gif_per_class, f"epoch {epoch}").save(
            work / "frames" / f"epoch-{epoch:04d}.png"
        )
        if epoch % config.snapshot_every == 0 or epoch == config.epochs:
            _save_snapshot(work, epoch, trainer)
        trainer.save(state, epoch)
        with log_path.open("a" if epoch > 1 else "w") as fh:
            fh.write(json.dumps(row) + "\n")
        log.info("epoch %d: %s", epoch, row)
        run.last_epoch = epoch
        elapsed = (time.perf_counter() - began) / 60
        if max_minutes is not None and elapsed >= max_minutes and epoch < config.epochs:
            run.stopped_by_budget = True
            log.warning("time budget of %.0f min reached after epoch %d", max_minutes, epoch)
            _save_snapshot(work, epoch, trainer)
            break
    return run


def _card(
    config: GanConfig,
    data: GanData,
    run: _Run,
    *,
    chosen: int,
    selection: list[dict[str, Any]],
    feature_info: dict[str, Any] | None,
    max_minutes: float | None,
    command: str,
) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    seconds = sum(h["seconds"] for h in run.history)
    return {
        "name": NAME,
        "kind": "generator",
        "architecture": "conditional DCGAN (conditional batch norm) + spectral-norm projection "
        "discriminator, hinge loss, DiffAugment, EMA generator",
        "why": (
            "Spectral norm + hinge loss is the stable GAN recipe that needs no gradient penalty "
            "(WGAN-GP's second backward pass is too slow on two CPU cores); projection "
            "conditioning and conditional batch norm keep the classes apart; DiffAugment keeps "
            "the discriminator from memorising ~1,300 training images; the EMA generator is "
            "smoother than the last iterate."
        ),
        "classes": list(CLASSES),
        "image_size": config.size,
        "z_dim": config.z_dim,
        "output": f"[0, 1] gray, values < {SNAP} set to 0 (background outside the lungs)",
        "preprocessing": {
            "classifier_spec": data.spec.to_dict(),
            "segmenter": data.segmenter,
            "then": f"area-downsampled to {config.size} px, outside re-zeroed, values < {SNAP} "
            "set to 0",
        },
        "data": {
            "content_hash": data.content_hash,
            "split_source": data.split_source,
            "counts": data.counts(),
            "trained_on": "train split only",
            "checkpoint_chosen_on": "val split",
        },
        "hyperparameters": asdict(config),
        "training": {
            "epochs_run": run.last_epoch,
            "steps_per_epoch": run.steps,
            "batch_size": run.batch,
            "seconds": round(seconds, 1),
            "seconds_per_epoch": round(seconds / max(len(run.history), 1), 1),
            "stopped_by_time_budget": run.stopped_by_budget,
            "max_minutes": max_minutes,
            "resumed_from_epoch": run.start_epoch or None,
            "load_average_start_this_run": run.load_start,
            "load_average_end": _load(),
            "cpus": os.cpu_count(),
            "niceness": os.nice(0),
            "history": run.history,
            "command": command,
        },
        "selection": {
            "chosen_epoch": chosen,
            "rule": "lowest mean per-class Frechet distance to the val split (classifier "
            "features), as many samples per class as val has",
            "features": feature_info or {},
            "snapshots": selection,
        },
        "watermark": "samples served by the platform carry 'SYNTHETIC' in the pixels and "
        "in the PNG metadata (ml.generate.watermark); uploads carrying either are refused",
        "framework": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def train_generator(
    data: GanData,
    out_dir: Path,
    config: GanConfig | None = None,
    *,
    work_dir: Path | None = None,
    features: Callable[[np.ndarray], np.ndarray] | None = None,
    feature_info: dict[str, Any] | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    command: str = "",
) -> GanResult:
    """Train (or resume), choose the snapshot on val, write the bundle (module docstring)."""
    import keras
    from PIL import Image

    from ml.models.artifacts import sha256_file, write_card

    config = config or GanConfig()
    if config.size != data.size:
        raise ValueError(f"config.size {config.size} differs from the data's {data.size}")
    if config.epochs < 1:
        raise ValueError("epochs must be at least 1")
    out_dir = Path(out_dir)
    work = Path(work_dir or Path("var/cache/gan")) / f"run-{config.key(data.content_hash)}"
    (work / "frames").mkdir(parents=True, exist_ok=True)
    (work / "snapshots").mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    trainer = GanTrainer(config)
    run = _train(trainer, data, work, max_minutes, progress)
    snapshots = {
        int(p.stem.split("-")[1]): p
        for p in (work / "snapshots").glob("epoch-*.npz")
        if int(p.stem.split("-")[1]) <= run.last_epoch
    }
    selection: list[dict[str, Any]] = []
    chosen = run.last_epoch
    if features is not None and snapshots:
        chosen, selection = select_snapshot(snapshots, trainer, data, features, config.seed)
        log.info("chosen on val: epoch %d", chosen)
    if chosen in snapshots:
        with np.load(snapshots[chosen]) as weights:
            trainer.ema.set_weights([weights[f"w_{i}"] for i in range(len(weights.files))])
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / f"{NAME}.keras"
    trainer.ema.save(artifact)
    frames = [
        Image.open(p).copy()
        for p in sorted((work / "frames").glob("epoch-*.png"))
        if int(p.stem.split("-")[1]) <= run.last_epoch
    ]
    gif = write_gif(frames, out_dir / GIF_NAME) if frames else None
    card = _card(
        config,
        data,
        run,
        chosen=chosen,
        selection=selection,
        feature_info=feature_info,
        max_minutes=max_minutes,
        command=command,
    )
    card["animation"] = GIF_NAME if gif is not None else None
    card["sha256"] = sha256_file(artifact)
    write_card(artifact, card)
    return GanResult(artifact=artifact, card=card, gif=gif)

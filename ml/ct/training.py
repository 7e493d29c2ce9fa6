"""Train the CT U-Net (``python -m ml ct train``).

Data: zenodo slices split by volume group and MedSeg slices by its own split
(:mod:`ml.ct.data`), cached at the model's resolution, augmented on the fly (flips,
90-degree turns, small rotation/zoom/shift, intensity jitter). Each epoch draws
``zenodo_per_epoch`` zenodo training slices at random (neighbouring slices are nearly
identical, so a share of them per epoch loses little) and repeats every MedSeg training
slice ``medseg_repeats`` times (42 slices against ~550: without repeats the lesion-type
head would hardly train). Masked losses (:mod:`ml.ct.model`) skip a head for the
samples without its label. Adam; the learning rate halves after ``plateau`` epochs
without a better validation score and training stops after ``patience``; the best
epoch's weights are kept.

Validation score (for early stopping and for choosing the post-processing): the mean
of the validation zenodo lung Dice, zenodo infection Dice and MedSeg infection Dice
(per slice, at the model's resolution); with ``--zenodo-only`` the MedSeg term is left
out, so that model never sees MedSeg before its cross-set test.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.ct.data import (
    MEDSEG,
    ZENODO,
    Augmentation,
    CTArrays,
    CTSample,
    augmented_batch,
    cached_arrays,
    medseg_samples,
    zenodo_samples,
)
from ml.ct.preprocess import CTPreprocessing

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

NAME = "ct-seg"
REPORT_DIR = "report"
# How the intensity normalisation was chosen (recorded on the card): two runs identical but
# for --normalise, each given the same wall-clock budget on the shared 2-core machine,
# compared on the validation slices only (score as for early stopping, after the
# post-processing grid).
NORMALISATION_CHOICE = {
    "chosen": "percentile",
    "validation_score": {"percentile": 0.7172, "clahe": 0.6723},
    "validation_detail": {
        "percentile": {
            "epochs": 6,
            "zenodo_lung_dice": 0.9716,
            "zenodo_infection_dice": 0.544,
            "medseg_infection_dice": 0.6359,
        },
        "clahe": {
            "epochs": 5,
            "zenodo_lung_dice": 0.9579,
            "zenodo_infection_dice": 0.3948,
            "medseg_infection_dice": 0.6641,
        },
    },
    "command": "python -m ml ct train --zenodo Z --medseg M --out var/ct-exp/NORM "
    "--normalise NORM --max-minutes 12 --no-evaluate (seed 0)",
    "note": "one run each, ~13.5 min, load average 4-7 on 2 cores: a weak preference; "
    "percentile scaling is also the simpler and faster one to serve",
}
# How the "no lung tissue found" bar was set (recorded on the card): the bundled model on
# the 157 validation slices (zenodo val groups + MedSeg val) and on the 37 non-chest images
# that ship with installed packages (ml.serving.ood.packaged_non_chest_images).
LUNG_BAR_CHOICE = {
    "chosen": {"min_lung_fraction": 0.005, "min_lung_confidence": 0.0},
    "lung_area": "predicted lungs >= 0.5 % of the slice: every validation and test slice "
    "passes (smallest predicted share on validation 4.3 %, on zenodo test 0.8 %); refuses "
    "only 7 of the 37 non-chest images: the bar catches blank or lung-free slices, not "
    "other images (the modality check at upload does that)",
    "lung_confidence_rejected": {
        "definition": "share of the predicted lung pixels with probability >= 0.9",
        "refused_at": {
            "0.4": {"validation_slices": 6, "non_chest": 30},
            "0.5": {"validation_slices": 7, "non_chest": 34},
            "0.6": {"validation_slices": 7, "non_chest": 36},
        },
        "why_rejected": "the refused validation slices are MedSeg slices (7 of its 8): the "
        "lung head learnt from zenodo masks only and is unsure on MedSeg's lung-window, "
        "heavily consolidated slices",
    },
    "note": "no abdomen CT slices are available here, so neither bar is measured on them",
}


@dataclass
class CTTrainConfig:
    width: int = 16
    depth: int = 4
    separable_from: int = 1
    epochs: int = 40
    patience: int = 8
    plateau: int = 4  # epochs without improvement before the learning rate halves
    batch_size: int = 8
    learning_rate: float = 2e-3
    zenodo_per_epoch: int = 320
    medseg_repeats: int = 6
    seed: int = 0
    test_fraction: float = 0.2  # zenodo slices in the test volume groups (at least)
    val_fraction: float = 0.15  # zenodo slices in the validation volume groups (at least)
    medseg_val_fraction: float = 0.16  # of the MedSeg train slices, by slice
    zenodo_only: bool = False
    max_minutes: float | None = None  # stop after the epoch that passes this budget
    n_bootstrap: int = 2000
    sheet_slices: int = 8
    preprocessing: dict[str, Any] = field(default_factory=lambda: CTPreprocessing().to_dict())
    augmentation: dict[str, Any] = field(default_factory=lambda: asdict(Augmentation()))


@dataclass
class CTTrainResult:
    artifact: Path
    card: dict[str, Any]
    report_dir: Path | None


def weights_sha256(model: Any) -> str:
    """Hash of the weights alone (the .keras zip also stores its save time)."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight, dtype=np.float32).tobytes())
    return digest.hexdigest()


def load_samples(
    zenodo_dir: Path, medseg_dir: Path | None, config: CTTrainConfig
) -> list[CTSample]:
    samples = zenodo_samples(zenodo_dir, config.seed, config.test_fraction, config.val_fraction)
    if medseg_dir is not None:
        samples += medseg_samples(medseg_dir, config.seed, config.medseg_val_fraction)
    return samples


def split_summary(samples: Sequence[CTSample]) -> dict[str, Any]:
    """Counts and volume groups per split, for the card."""
    summary: dict[str, Any] = {}
    for source in (ZENODO, MEDSEG):
        part = [s for s in samples if s.source == source]
        if not part:
            continue
        summary[source] = {
            split: {
                "slices": sum(s.split == split for s in part),
                **(
                    {"volume_groups": sorted({s.group for s in part if s.split == split})}
                    if source == ZENODO
                    else {}
                ),
            }
            for split in ("train", "val", "test")
        }
    return summary


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(pred, truth).sum()) / total


def predict_heads(model: Any, x: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    """The three heads of prepared inputs (n, S, S) by direct calls, batch by batch."""
    import tensorflow as tf

    parts: dict[str, list[np.ndarray]] = {"lungs": [], "infection": [], "lesion_type": []}
    for start in range(0, len(x), batch):
        chunk = tf.constant(x[start : start + batch, ..., np.newaxis].astype(np.float32))
        lungs, infection, lesion_type = model(chunk, training=False)
        parts["lungs"].append(lungs.numpy()[..., 0])
        parts["infection"].append(infection.numpy()[..., 0])
        parts["lesion_type"].append(lesion_type.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def validation_scores(
    heads: dict[str, np.ndarray],
    arrays: CTArrays,
    *,
    infection_threshold: float = 0.5,
    restrict_to_lungs: bool = False,
    lung_margin: int = 3,
) -> dict[str, float]:
    """Mean per-slice Dice at the model's resolution: zenodo lungs and infection,
    MedSeg infection (where present)."""
    from ml.ct.segmenter import clean_lungs, dilate

    zenodo = np.flatnonzero(arrays.has_lungs)
    medseg = np.flatnonzero(arrays.has_type)
    lungs_dice, zen_inf, med_inf = [], [], []
    for i in range(len(arrays)):
        lungs = clean_lungs(heads["lungs"][i], 0.5, 30)
        infection = heads["infection"][i] >= infection_threshold
        if restrict_to_lungs and lungs.any():
            infection &= dilate(lungs, lung_margin)
        if i in zenodo:
            lungs_dice.append(_dice(lungs, arrays.lungs[i] > 0))
            zen_inf.append(_dice(infection, arrays.infection[i] > 0))
        elif i in medseg:
            med_inf.append(_dice(infection, arrays.infection[i] > 0))
    scores = {}
    if lungs_dice:
        scores["zenodo_lung_dice"] = float(np.mean(lungs_dice))
        scores["zenodo_infection_dice"] = float(np.mean(zen_inf))
    if med_inf:
        scores["medseg_infection_dice"] = float(np.mean(med_inf))
    return scores


def _score(scores: dict[str, float], zenodo_only: bool) -> float:
    keys = ["zenodo_lung_dice", "zenodo_infection_dice"]
    if not zenodo_only:
        keys.append("medseg_infection_dice")
    return float(np.mean([scores[k] for k in keys if k in scores]))


def fit_ct(
    model: keras.Model,
    train: CTArrays,
    val: CTArrays | None,
    config: CTTrainConfig,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` (compiled) epoch by epoch; early stopping on the validation score
    (none without ``val``: then every epoch runs), the one epoch loop
    (:func:`ml.models.fit.fit_by_epoch`). Leaves the best weights in ``model`` and
    returns the training record for the card."""
    from ml.models.fit import fit_by_epoch

    rng = np.random.default_rng(config.seed)
    aug = Augmentation(**config.augmentation)
    zen_rows = np.flatnonzero(~train.has_type)
    med_rows = np.flatnonzero(train.has_type)

    def run_epoch(epoch: int, learning_rate: float) -> tuple[dict[str, Any], float]:
        take = min(config.zenodo_per_epoch, len(zen_rows))
        rows = np.concatenate(
            [
                rng.choice(zen_rows, take, replace=False) if take else zen_rows[:0],
                np.tile(med_rows, config.medseg_repeats),
            ]
        )
        rng.shuffle(rows)
        losses = []
        for start in range(0, len(rows), config.batch_size):
            x, y = augmented_batch(train, rows[start : start + config.batch_size], rng, aug)
            out = model.train_on_batch(x, y, return_dict=True)
            losses.append(float(out["loss"]))
        record: dict[str, Any] = {
            "loss": round(float(np.mean(losses)), 4),
            "learning_rate": learning_rate,
        }
        if val is not None and len(val):
            scores = validation_scores(predict_heads(model, val.x), val)
            score = _score(scores, config.zenodo_only)
            record.update({k: round(v, 4) for k, v in scores.items()})
            record["val_score"] = round(score, 4)
        else:
            score = float(epoch)  # no validation: keep the last epoch
        return record, score

    result = fit_by_epoch(
        model,
        run_epoch,
        epochs=config.epochs,
        patience=config.patience,
        learning_rate=config.learning_rate,
        plateau=config.plateau,
        max_minutes=config.max_minutes,
        desc="ct",
        postfix=("loss", "val_score"),
        log_level=logging.INFO,
        progress=progress,
    )
    return {
        "seconds": result.seconds,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_score": round(result.best_score, 4) if val is not None else None,
        "stopped": result.stopped,
        "history": result.history,
    }


def choose_postprocessing(
    model: Any, val: CTArrays, zenodo_only: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Infection threshold and whether to keep infection inside the lungs, chosen on the
    validation slices (score as for early stopping). Returns (choice, the grid)."""
    heads = predict_heads(model, val.x)
    grid = []
    for threshold in (0.3, 0.4, 0.5, 0.6, 0.7):
        for restrict in (False, True):
            scores = validation_scores(
                heads, val, infection_threshold=threshold, restrict_to_lungs=restrict
            )
            grid.append(
                {
                    "infection_threshold": threshold,
                    "restrict_to_lungs": restrict,
                    **{k: round(v, 4) for k, v in scores.items()},
                    "val_score": round(_score(scores, zenodo_only), 4),
                }
            )
    best = max(grid, key=lambda row: row["val_score"])
    return {k: best[k] for k in ("infection_threshold", "restrict_to_lungs")}, grid


def build_model(config: CTTrainConfig, input_size: int, *, folded: bool = False) -> keras.Model:
    from ml.ct.model import build_ct_unet

    return build_ct_unet(
        input_size,
        width=config.width,
        depth=config.depth,
        separable_from=config.separable_from,
        seed=config.seed,
        folded=folded,
    )


def compile_model(model: keras.Model, learning_rate: float) -> None:
    import keras

    from ml.ct.model import LOSSES

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=LOSSES)


def save_model(model: keras.Model, config: CTTrainConfig, input_size: int, artifact: Path) -> None:
    """Save the serving form, atomically: uncompiled (the optimiser state would triple
    the file), batch normalisation folded into the convolutions
    (:func:`ml.ct.model.fold_batchnorm`)."""
    from ml.ct.model import fold_batchnorm

    artifact.parent.mkdir(parents=True, exist_ok=True)
    export = fold_batchnorm(model, build_model(config, input_size, folded=True))
    partial = artifact.with_name(f".{artifact.name}.partial.keras")
    export.save(partial)
    partial.replace(artifact)


def base_card(
    name: str, model: Any, artifact: Path, config: CTTrainConfig, purpose: str
) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from ml.ct.model import ARCHITECTURE, OUTPUTS, TYPE_CLASSES
    from ml.models.artifacts import sha256_file

    return {
        "name": name,
        "task": "ct lesion segmentation",
        "purpose": purpose,
        "architecture": ARCHITECTURE,
        "outputs": {
            "heads": list(OUTPUTS),
            "lesion_type_classes": list(TYPE_CLASSES),
            "note": "lungs, infection: sigmoid; lesion_type: softmax",
        },
        "sha256": sha256_file(artifact),
        "weights_sha256": weights_sha256(model),
        "parameters": int(model.count_params()),
        "serving_form": "batch normalisation folded into the convolutions "
        "(ml.ct.model.fold_batchnorm); outputs equal to the trained model's to float rounding",
        "file_bytes": artifact.stat().st_size,
        "framework": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "preprocessing": dict(config.preprocessing),
        "hyperparameters": {
            k: v for k, v in asdict(config).items() if k not in ("preprocessing", "augmentation")
        },
        "augmentation": dict(config.augmentation),
    }


def train_ct(
    zenodo_dir: Path,
    medseg_dir: Path | None,
    out_dir: Path,
    config: CTTrainConfig,
    *,
    cache_dir: Path | None = Path("var/cache/ct"),
    cross_model: Path | None = None,
    evaluate: bool = True,
    progress: bool = True,
) -> CTTrainResult:
    """Train, choose the post-processing on validation, save ``out_dir/ct-seg.keras``
    + card, and (``evaluate``) write the test report into ``out_dir/report``."""
    import os

    import keras
    import tensorflow as tf

    from ml.ct.segmenter import PostProcessing
    from ml.models.artifacts import read_card, write_card

    started = time.perf_counter()
    cpu_started = time.process_time()
    load_before = [round(x, 2) for x in os.getloadavg()]
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    spec = CTPreprocessing.from_dict(config.preprocessing)
    samples = load_samples(zenodo_dir, None if config.zenodo_only else medseg_dir, config)
    train_samples = [s for s in samples if s.split == "train"]
    val_samples = [s for s in samples if s.split == "val"]
    if not train_samples or not val_samples:
        raise ValueError("CT training needs training and validation slices.")
    train_arrays = cached_arrays(train_samples, spec, cache_dir)
    val_arrays = cached_arrays(val_samples, spec, cache_dir)
    log.info("ct: %d train / %d val slices", len(train_arrays), len(val_arrays))

    model = build_model(config, spec.size)
    compile_model(model, config.learning_rate)
    training = fit_ct(model, train_arrays, val_arrays, config, progress=progress)
    choice, grid = choose_postprocessing(model, val_arrays, config.zenodo_only)
    training["wall_seconds"] = round(time.perf_counter() - started, 1)
    # CPU time of all threads: on a shared machine the wall time says more about the
    # other work than about this training; CPU seconds / cores ~ wall time when idle.
    training["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    training["load_average_before"] = load_before
    training["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    training["cpus"] = os.cpu_count()

    out_dir = Path(out_dir)
    artifact = out_dir / f"{NAME}.keras"
    save_model(model, config, spec.size, artifact)
    name = f"{NAME}-zenodo-only" if config.zenodo_only else NAME
    card = base_card(
        name,
        model,
        artifact,
        config,
        "Segments lungs, COVID-19 infection, ground-glass and consolidation on axial chest "
        "CT slices; reports the share of the lung affected. Research use, not a "
        "diagnostic device.",
    )
    post = PostProcessing()
    card["postprocessing"] = {
        **asdict(post),
        **choice,
        "chosen_on": "validation slices (zenodo val groups + MedSeg val slices): grid of "
        "infection_threshold x restrict_to_lungs, best mean per-slice Dice",
        "grid": grid,
    }
    card["preprocessing_choice"] = NORMALISATION_CHOICE
    card["lung_bar_choice"] = LUNG_BAR_CHOICE
    card["data"] = {
        "zenodo": str(zenodo_dir),
        "medseg": None if config.zenodo_only else str(medseg_dir),
        "split": split_summary(samples),
        "zenodo_split": "by volume_group, shuffled with the seed: test groups first, "
        f"then validation, to >= {config.test_fraction:.0%} / {config.val_fraction:.0%} of "
        "the slices; the rest train",
        "medseg_split": "the given train/test split; validation = "
        f"{config.medseg_val_fraction:.0%} of the train slices, by slice (no patient ids)",
    }
    card["training"] = training
    write_card(artifact, card)
    report_dir = None
    if evaluate:
        from ml.ct.evaluation import evaluate_ct

        report_dir = out_dir / REPORT_DIR
        evaluate_ct(
            artifact,
            zenodo_dir,
            medseg_dir,
            report_dir,
            cross_model=cross_model,
            config=config,
            update_card=True,
        )
    return CTTrainResult(artifact, read_card(artifact), report_dir)

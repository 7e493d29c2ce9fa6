"""Train, evaluate and report the lung U-Net (``python -m ml lungs train|evaluate``).

Training: covid-chestxray images with a lungVAE mask, split by patient
(:func:`ml.lungs.data.masked_images`), augmented on the fly from a cache of
letterboxed arrays, binary cross-entropy + soft Dice, Adam, early stopping on the
validation patients' Dice (best weights kept). Seeds are fixed and TensorFlow's op
determinism is on, so the same command on the same machine gives the same weights
(the ``.keras`` zip itself records its save time, so compare ``weights_sha256``).

Evaluation: Dice and IoU at the original resolution of the held-out (test) patients'
masks, through the serving path (:class:`ml.lungs.segmenter.LungSegmenter`), with 95 %
bootstrap intervals over patients, beside the classical heuristic
(:mod:`ml.lungs.heuristic`) on the same images. Children's (pediatric) and NIH adult
films have no masks: for them the report gives the share of films where plausible
lung fields were found and contact sheets of the predicted outlines to look at.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from ml.data.preprocess import open_image, to_unit_gray
from ml.lungs import masks
from ml.lungs.data import (
    Arrays,
    MaskedImage,
    augment,
    cached_arrays,
    masked_images,
    model_inputs,
    reference_mask,
)

if TYPE_CHECKING:
    from ml.lungs.segmenter import LungResult, LungSegmenter

log = logging.getLogger(__name__)

NAME = "lung-unet"
MODEL_FILE = f"{NAME}.keras"
REPORT_DIR = "lungs-report"


@dataclass
class LungTrainConfig:
    input_size: int = 128
    width: int = 8
    epochs: int = 60
    patience: int = 12
    batch_size: int = 16
    learning_rate: float = 2e-3
    repeats: int = 4  # augmented variants of each training image per epoch
    negatives: float = 0.0  # share of variants made inverted/upside down/turned, empty target
    seed: int = 0
    n_bootstrap: int = 2000
    sheet_images: int = 24  # outlines per source on the contact sheets
    found_rate_images: int = 100  # films per unmasked source for the found rate
    bad_input_images: int = 30  # films per unmasked source made unfit (inverted, turned...)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LungTrainResult:
    artifact: Path
    card: dict[str, Any]
    report_dir: Path


def weights_sha256(model: Any) -> str:
    """Hash of the weights alone (the .keras zip also stores its save time)."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _dice_batch(prob: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice of thresholded, post-processed predictions at the model's resolution."""
    return float(
        np.mean([masks.dice(masks.postprocess(p), t) for p, t in zip(prob, truth, strict=True)])
    )


def _fit(
    model: Any,
    train_arrays: Arrays,
    val_x: np.ndarray,
    val_y: np.ndarray,
    config: LungTrainConfig,
    rng: np.random.Generator,
    *,
    progress: bool,
) -> tuple[list[dict[str, Any]], int, float]:
    """Train ``model`` one epoch of fresh augmentations at a time, early stopping on the
    validation Dice (the one epoch loop, :func:`ml.models.fit.fit_by_epoch`). Leaves the
    best epoch's weights in ``model``; returns (history, best epoch, its validation Dice)."""
    import tensorflow as tf

    from ml.models.fit import fit_by_epoch

    size = config.input_size
    n_train = len(train_arrays.images)
    call = tf.function(
        lambda x: model(x, training=False)[..., 0],
        input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32)],
    )

    def run_epoch(_epoch: int, _learning_rate: float) -> tuple[dict[str, Any], float]:
        n = n_train * config.repeats
        order = np.tile(np.arange(n_train), config.repeats)
        x = np.empty((n, size, size, 1), np.float32)
        y = np.empty((n, size, size, 1), np.float32)
        for j, index in enumerate(order):
            x[j, ..., 0], y[j, ..., 0] = augment(
                train_arrays.images[index],
                train_arrays.masks[index],
                train_arrays.boxes[index],
                size,
                rng,
                config.negatives,
            )
        fit = model.fit(x, y, batch_size=config.batch_size, epochs=1, shuffle=True, verbose=0)
        val_prob = np.concatenate(
            [call(tf.constant(val_x[i : i + 32])).numpy() for i in range(0, len(val_x), 32)]
        )
        val_dice = _dice_batch(val_prob, val_y)
        loss = float(fit.history["loss"][-1])
        return {"loss": round(loss, 4), "val_dice": round(val_dice, 4)}, val_dice

    result = fit_by_epoch(
        model,
        run_epoch,
        epochs=config.epochs,
        patience=config.patience,
        learning_rate=config.learning_rate,
        desc="lungs",
        postfix=("loss", "val_dice"),
        progress=progress,
    )
    return result.history, result.best_epoch, result.best_score


def train_lungs(
    covid_dir: Path,
    out_dir: Path,
    config: LungTrainConfig,
    *,
    splits_csv: Path | None = None,
    cache_dir: Path | None = Path("var/cache"),
    other_sources: Sequence[Path] = (),
    limit: int | None = None,
    progress: bool = True,
) -> LungTrainResult:
    """Train, save ``out_dir/lung-unet.keras`` + card, evaluate, write the report."""
    import keras
    import tensorflow as tf

    from ml.lungs.model import ARCHITECTURE, bce_dice_loss, build_lung_unet
    from ml.models.artifacts import sha256_file, write_card

    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    items = masked_images(covid_dir, splits_csv=splits_csv, seed=config.seed)
    if limit:
        # A small run (tests, smoke checks): the first ``limit`` images of each split.
        items = [
            i for s in ("train", "val", "test") for i in [x for x in items if x.split == s][:limit]
        ]
    train_items = [i for i in items if i.split == "train"]
    val_items = [i for i in items if i.split == "val"]
    if not train_items or not val_items:
        raise ValueError("The lung split needs training and validation images.")
    log.info(
        "lungs: %d train / %d val / %d test images",
        len(train_items),
        len(val_items),
        sum(i.split == "test" for i in items),
    )
    train_arrays = cached_arrays(train_items, cache_dir)
    val_x, val_y = model_inputs(cached_arrays(val_items, cache_dir), config.input_size)
    size = config.input_size
    rng = np.random.default_rng(config.seed)

    model = build_lung_unet(size, width=config.width, seed=config.seed)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=bce_dice_loss)
    history, best_epoch, best_val_dice = _fit(
        model, train_arrays, val_x, val_y, config, rng, progress=progress
    )
    train_seconds = time.perf_counter() - started

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / MODEL_FILE
    partial = out_dir / f".{MODEL_FILE}.partial.keras"
    # Saved from an uncompiled copy: the Adam state would triple the file for nothing.
    export = build_lung_unet(size, width=config.width, seed=config.seed)
    export.set_weights(model.get_weights())
    export.save(partial)
    partial.replace(artifact)
    counts = {s: sum(i.split == s for i in items) for s in ("train", "val", "test")}
    patients = {s: len({i.patient for i in items if i.split == s}) for s in counts}
    card: dict[str, Any] = {
        "name": NAME,
        "task": "lung segmentation",
        "architecture": ARCHITECTURE,
        "sha256": sha256_file(artifact),
        "weights_sha256": weights_sha256(model),
        "parameters": int(model.count_params()),
        "framework": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "preprocessing": {
            "input_size": size,
            "channels": 1,
            "resize": "letterbox-bilinear",
            "normalise": "unit-range",
            "version": 1,
            "note": "ml.lungs.masks.letterbox, the same as ml.data.preprocess.preprocess",
        },
        "postprocessing": {
            "threshold": 0.5,
            "steps": "two largest 8-connected components, holes filled, cleaned "
            "probabilities resampled bilinearly to the original resolution",
            "plausibility": {
                "min_area": masks.MIN_AREA,
                "max_area": masks.MAX_AREA,
                "min_side_ratio": masks.MIN_SIDE_RATIO,
                "side_by_side": "centroids at least 15 % of the width apart, more "
                "apart horizontally than vertically",
            },
        },
        "data": {
            "source": "covid-chestxray",
            "masks": "annotations/lungVAE-masks (lungVAE model outputs, arXiv:2005.10052, "
            "CC BY-SA), not expert drawings",
            "images": len(items),
            "split": {
                "level": "patient",
                "source": str(splits_csv.name)
                if splits_csv
                else f"patient shuffle, seed {config.seed}",
                "counts": counts,
                "patients": patients,
                "duplicate_patients_merged": [list(p) for p in (("285", "339"), ("287", "340"))],
                "test_images": sorted(i.key for i in items if i.split == "test"),
            },
        },
        "hyperparameters": asdict(config),
        "training": {
            "seconds": round(train_seconds, 1),
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "best_val_dice": round(best_val_dice, 4),
            "history": history,
        },
    }
    write_card(artifact, card)
    report_dir = out_dir / REPORT_DIR
    evaluate_lungs(
        artifact,
        covid_dir,
        report_dir,
        items=items,
        other_sources=other_sources,
        config=config,
        update_card=True,
    )
    from ml.models.artifacts import read_card

    return LungTrainResult(artifact, read_card(artifact), report_dir)


# --- evaluation --------------------------------------------------------------------


def _bootstrap_mean(
    values: np.ndarray, groups: Sequence[str], n: int, seed: int
) -> list[float] | None:
    """95 % percentile interval of the mean per image, resampling whole patients
    (None with fewer than two patients: there is nothing to resample)."""
    if n <= 0 or len(set(groups)) < 2:
        return None
    names = sorted(set(groups))
    index = {g: np.flatnonzero(np.asarray(groups) == g) for g in names}
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    for b in range(n):
        drawn = rng.integers(0, len(names), len(names))
        rows = np.concatenate([index[names[d]] for d in drawn])
        means[b] = values[rows].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def _summary(values: list[float], groups: list[str], n_bootstrap: int, seed: int) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(array.mean()), 4),
        "ci95": _bootstrap_mean(array, groups, n_bootstrap, seed),
        "median": round(float(np.median(array)), 4),
        "min": round(float(array.min()), 4),
    }


def heuristic_mask(gray: np.ndarray, size: int = 128) -> np.ndarray:
    """The classical heuristic's mask at the original resolution (it works letterboxed)."""
    from ml.lungs.heuristic import lung_fields

    x, box = masks.letterbox(gray, size)
    fields = lung_fields(x)
    return masks.unletterbox(fields.mask.astype(np.float32), box) >= 0.5


def _tile(
    gray: np.ndarray, predicted: np.ndarray, reference: np.ndarray | None, text: str
) -> Image.Image:
    """A 160-pixel letterboxed tile: predicted outline green, reference blue."""
    size = 160
    x, _ = masks.letterbox(gray, size)
    rgb = np.repeat((x * 255).astype(np.uint8)[..., None], 3, axis=-1)
    for mask, colour in ((reference, (40, 120, 255)), (predicted, (0, 230, 118))):
        if mask is None:
            continue
        small, _ = masks.letterbox(mask.astype(np.float32), size)
        rgb[masks.outline(small >= 0.5, 1)] = colour
    tile = Image.fromarray(rgb)
    ImageDraw.Draw(tile).text((3, 2), text, fill=(255, 255, 0))
    return tile


def _sheet(tiles: list[Image.Image], columns: int = 8) -> Image.Image:
    width, height = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width, rows * height))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * width, (i // columns) * height))
    return sheet


def _save_png(image: Image.Image, path: Path) -> None:
    image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path, optimize=True)


def _reason(result: LungResult) -> str:
    return "ok" if result.found else result.message.rsplit("(", 1)[-1].rstrip(")")


BAD_INPUT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "inverted": lambda g: 1.0 - g,
    "upside down": lambda g: g[::-1, ::-1],
    "turned 90 degrees": lambda g: np.rot90(g),
    "left half only": lambda g: g[:, : g.shape[1] // 2],
}


def _count_refusals(
    segmenter: LungSegmenter, gray: np.ndarray, counts: dict[str, list[int]]
) -> None:
    """Add to ``counts[kind] = [refused, films]`` for each kind of bad input made of a film."""
    for kind, transform in BAD_INPUT.items():
        result = segmenter.segment_gray(np.ascontiguousarray(transform(gray)))
        refused, films = counts.get(kind, [0, 0])
        counts[kind] = [refused + (not result.found), films + 1]


def _other_source_images(root: Path, n: int, seed: int) -> tuple[str, list[Path]]:
    """Source name and ``n`` films drawn with ``seed`` (half per class where there are two)."""
    from ml.data.loaders import load_dataset

    dataset = load_dataset(root)
    source = root.name  # the NIH loader names both NIH folders "adult-normal"
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Path]] = {}
    for record in sorted(dataset.records, key=lambda r: str(r.path)):
        by_label.setdefault(record.label, []).append(record.path)
    chosen: list[Path] = []
    per_label = max(1, n // max(1, len(by_label)))
    for label in sorted(by_label):
        paths = by_label[label]
        take = rng.choice(len(paths), size=min(per_label, len(paths)), replace=False)
        chosen += [paths[i] for i in sorted(take)]
    return source, chosen


def _held_out_rows(
    chosen: list[MaskedImage],
    segmenter: LungSegmenter,
    config: LungTrainConfig,
    refusals: dict[str, list[int]],
) -> tuple[list[dict[str, Any]], list[Image.Image], list[float]]:
    """Per masked image: Dice/IoU of the segmenter and the heuristic against its mask;
    the first ``config.sheet_images`` tiles; segment_gray latencies (ms). Counts the
    bad input made of each film into ``refusals``."""
    rows: list[dict[str, Any]] = []
    tiles: list[Image.Image] = []
    latencies: list[float] = []
    for item in chosen:
        gray = to_unit_gray(open_image(item.image))
        reference = reference_mask(item, gray.shape)
        start = time.perf_counter()
        result = segmenter.segment_gray(gray)
        latencies.append((time.perf_counter() - start) * 1000)
        heuristic = heuristic_mask(gray)
        rows.append(
            {
                "image": item.image.name,
                "patient": item.patient,
                "dice": round(masks.dice(result.mask, reference), 4),
                "iou": round(masks.iou(result.mask, reference), 4),
                "heuristic_dice": round(masks.dice(heuristic, reference), 4),
                "heuristic_iou": round(masks.iou(heuristic, reference), 4),
                "found": result.found,
                "reason": _reason(result),
                "area_fraction": round(result.area_fraction, 4),
                "reference_area_fraction": round(float(reference.mean()), 4),
            }
        )
        _count_refusals(segmenter, gray, refusals)
        if len(tiles) < config.sheet_images:
            tiles.append(
                _tile(gray, result.mask, reference, f"{rows[-1]['dice']:.2f} {_reason(result)}")
            )
    return rows, tiles, latencies


def _other_source_outcomes(
    root: Path,
    segmenter: LungSegmenter,
    config: LungTrainConfig,
    refusals: dict[str, list[int]],
) -> tuple[str, dict[str, Any], list[Image.Image]]:
    """A source without masks: its name, found rate and outcomes on a seeded sample of
    films, and the tiles of its contact sheet. Counts the bad input made of the first
    ``config.bad_input_images`` films into ``refusals``."""
    source, paths = _other_source_images(root, config.found_rate_images, config.seed)
    found: list[bool] = []
    areas: list[float] = []
    tiles: list[Image.Image] = []
    reasons: dict[str, int] = {}
    for path in paths:
        gray = to_unit_gray(open_image(path))
        result = segmenter.segment_gray(gray)
        found.append(result.found)
        areas.append(result.area_fraction)
        if len(found) <= config.bad_input_images:
            _count_refusals(segmenter, gray, refusals)
        reasons[_reason(result)] = reasons.get(_reason(result), 0) + 1
    # The sheet shows an even spread over the sample (both classes).
    for path in paths[:: max(1, len(paths) // config.sheet_images)][: config.sheet_images]:
        gray = to_unit_gray(open_image(path))
        result = segmenter.segment_gray(gray)
        tiles.append(_tile(gray, result.mask, None, _reason(result)))
    outcome = {
        "films": len(paths),
        "found_rate": round(float(np.mean(found)), 3),
        "area_fraction_median": round(float(np.median(areas)), 3),
        "outcomes": dict(sorted(reasons.items())),
    }
    return source, outcome, tiles


def evaluate_lungs(
    artifact: Path,
    covid_dir: Path,
    report_dir: Path,
    *,
    items: list[MaskedImage] | None = None,
    splits_csv: Path | None = None,
    other_sources: Sequence[Path] = (),
    config: LungTrainConfig | None = None,
    split: str = "test",
    update_card: bool = False,
) -> dict[str, Any]:
    """Dice/IoU on ``split`` patients vs the heuristic, found rates, contact sheets, report.

    Writes ``report_dir/report.md``, ``metrics.json`` (the card with the figures) and the
    sheet PNGs; with ``update_card`` (training does) the figures (``metrics``,
    ``generalisation``, ``report``) also go into the card beside ``artifact``.
    """
    from ml.lungs.segmenter import LungSegmenter
    from ml.models.artifacts import read_card, write_card

    config = config or LungTrainConfig()
    card = read_card(artifact)
    if items is None:
        items = masked_images(covid_dir, splits_csv=splits_csv, seed=config.seed)
    chosen = [i for i in items if i.split == split] if split != "all" else list(items)
    if not chosen:
        raise ValueError(f"No masked images in the {split!r} split.")
    segmenter = LungSegmenter.load(artifact)
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)

    refusals: dict[str, list[int]] = {}  # bad input made of held-out and unmasked films
    rows, tiles, latencies = _held_out_rows(chosen, segmenter, config, refusals)
    groups = [r["patient"] for r in rows]
    b, seed = config.n_bootstrap, config.seed
    covid_metrics = {
        "split": split,
        "images": len(rows),
        "patients": len(set(groups)),
        "dice": _summary([r["dice"] for r in rows], groups, b, seed),
        "iou": _summary([r["iou"] for r in rows], groups, b, seed),
        "found_rate": round(float(np.mean([r["found"] for r in rows])), 3),
        "heuristic": {
            "dice": _summary([r["heuristic_dice"] for r in rows], groups, b, seed),
            "iou": _summary([r["heuristic_iou"] for r in rows], groups, b, seed),
        },
        "interval": "95 % percentile bootstrap of the mean over images, resampling patients",
    }
    # Sheet of the test patients: the masked images first, then their other films.
    sheet_paths = {}
    if len(tiles) < config.sheet_images:
        extra = _unmasked_films_of(
            covid_dir, {i.patient for i in chosen}, {i.image for i in chosen}
        )
        for path in extra[: config.sheet_images - len(tiles)]:
            gray = to_unit_gray(open_image(path))
            result = segmenter.segment_gray(gray)
            tiles.append(_tile(gray, result.mask, None, f"-- {_reason(result)}"))
    sheet_paths["covid-chestxray"] = report_dir / "sheet-covid-chestxray.png"
    _save_png(_sheet(tiles), sheet_paths["covid-chestxray"])

    generalisation: dict[str, Any] = {}
    for root in other_sources:
        source, outcome, source_tiles = _other_source_outcomes(
            Path(root), segmenter, config, refusals
        )
        generalisation[source] = outcome
        sheet_paths[source] = report_dir / f"sheet-{source}.png"
        _save_png(_sheet(source_tiles), sheet_paths[source])

    card["metrics"] = {"per_source": {"covid-chestxray": covid_metrics}}
    card["generalisation"] = {
        "note": "no reference masks for these sources: share of a seeded sample of films "
        "where plausible lung fields were found; outlines on the contact sheets",
        "per_source": generalisation,
    }
    card["bad_input"] = {
        "note": f"films made unfit on purpose: the {split} covid-chestxray images and the "
        f"first {config.bad_input_images} films of each other source; [refused, films]",
        "refused": refusals,
    }
    card["latency_ms_during_evaluation"] = {
        "segment_gray_p50": round(float(np.median(latencies)), 1),
        "note": "whole segment_gray at the original resolution, on a shared machine; "
        "see bench/lungs.py for the benchmark",
    }
    card["report"] = {
        "dir": report_dir.name,
        "markdown": "report.md",
        "contact_sheets": {s: p.name for s, p in sheet_paths.items()},
    }
    if update_card:
        write_card(artifact, card)
    (report_dir / "metrics.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    (report_dir / "per-image.json").write_text(json.dumps(rows, indent=1) + "\n")
    (report_dir / "report.md").write_text(_markdown(card, rows, sheet_paths))
    return card


def _unmasked_films_of(covid_dir: Path, patients: set[str], skip: set[Path]) -> list[Path]:
    from ml.data.loaders import load_covid_chestxray

    dataset = load_covid_chestxray(Path(covid_dir))
    return sorted(r.path for r in dataset.records if r.patient in patients and r.path not in skip)


def _fmt(summary: dict[str, Any]) -> str:
    if summary["ci95"] is None:
        return f"{summary['mean']:.3f}"
    low, high = summary["ci95"]
    return f"{summary['mean']:.3f} ({low:.3f}-{high:.3f})"


def _markdown(card: dict[str, Any], rows: list[dict[str, Any]], sheets: dict[str, Path]) -> str:
    m = card["metrics"]["per_source"]["covid-chestxray"]
    data, training = card["data"], card.get("training", {})
    lines = [
        f"# Lung segmentation: {card['name']} ({card['sha256'][:12]})",
        "",
        f"Small U-Net ({card['parameters']:,} parameters), input "
        f"{card['preprocessing']['input_size']} px letterboxed grayscale, trained from scratch "
        "on the lungVAE masks of covid-chestxray (model outputs, not expert drawings). "
        "Post-processing: two largest regions, holes filled; a plausibility check says "
        "when lung fields are not found.",
        "",
        f"Split: patient level ({data['split']['source']}); images "
        f"{data['split']['counts']}, patients {data['split']['patients']}. "
        f"Training: {training.get('epochs_run')} epochs, best {training.get('best_epoch')} "
        f"(validation Dice {training.get('best_val_dice')}), {training.get('seconds')} s.",
        "",
        f"## Held-out patients ({m['split']}: {m['images']} images, {m['patients']} patients)",
        "",
        "Mean over images, 95 % interval from a bootstrap over patients; "
        "at the original resolution.",
        "",
        "| method | Dice | IoU | min Dice |",
        "|---|---|---|---|",
        f"| U-Net | {_fmt(m['dice'])} | {_fmt(m['iou'])} | {m['dice']['min']:.3f} |",
        f"| classical heuristic | {_fmt(m['heuristic']['dice'])} | {_fmt(m['heuristic']['iou'])} "
        f"| {m['heuristic']['dice']['min']:.3f} |",
        "",
        f"Plausible lung fields found on {m['found_rate']:.0%} of these images.",
        "",
        "## Sources without masks",
        "",
        "| source | films | found | median area | outcomes |",
        "|---|---|---|---|---|",
    ]
    for source, g in card["generalisation"]["per_source"].items():
        lines.append(
            f"| {source} | {g['films']} | {g['found_rate']:.0%} | {g['area_fraction_median']:.2f} "
            f"| {', '.join(f'{k} {v}' for k, v in g['outcomes'].items())} |"
        )
    bad = card.get("bad_input", {}).get("refused", {})
    if bad:
        lines += [
            "",
            "## Bad input",
            "",
            "Films made unfit on purpose; the segmenter should answer 'lung fields not found'.",
            "",
            "| input | refused |",
            "|---|---|",
        ]
        for kind, (refused, films) in bad.items():
            lines.append(f"| {kind} | {refused} of {films} ({refused / max(films, 1):.0%}) |")
    lines += [
        "",
        "## Contact sheets",
        "",
        "Green: predicted outline; blue: lungVAE mask "
        "(covid-chestxray only). Tile text: Dice (where there is a mask) and the "
        "plausibility outcome.",
        "",
    ]
    for source, path in sheets.items():
        lines += [f"### {source}", "", f"![{source}]({path.name})", ""]
    lines += [
        "## Worst held-out images",
        "",
        "| image | Dice | heuristic Dice | outcome |",
        "|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["dice"])[:5]:
        lines.append(
            f"| {r['image']} | {r['dice']:.3f} | {r['heuristic_dice']:.3f} | {r['reason']} |"
        )
    return "\n".join(lines) + "\n"

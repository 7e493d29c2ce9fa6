"""``python -m ml generate evaluate``: is the generator any good, does it copy, does it help?

Everything is measured on the classifier's split (the generator trained on ``train``,
its checkpoint was chosen on ``val``; ``test`` is reported here), at the generator's
resolution, with the real images taking the same 64 px round trip as the generated ones.

1. **Distribution** per class and pooled, generated vs test, next to the real-vs-real
   baseline train vs test (the generated set has as many images per class as the train
   split, so both rows have the same sizes): Frechet distance and KID on the
   classifier's pooled features (:mod:`ml.generate.features`), improved precision and
   recall (k = 3). Also: the share of generated images the classifier assigns to the
   class they were asked for, next to its accuracy on the real test images.
2. **Memorisation**: every generated image's nearest training image in pixel space
   (64 x 64) and in feature space; the distance as a ratio to the median
   nearest-training distance of the *test* images (real images of other patients).
   A generated image is a *near copy* when its ratio is below the 1st percentile of the
   test images' ratios - closer to a training image than 99% of real images of other
   patients are. A positive control (training images shifted by one pixel, with
   noise) shows what copies measure. The closest pairs are drawn.
3. **Two-sample test**: a small CNN trained to tell generated from real training
   images, its held-out accuracy with a Wilson interval (0.5: cannot tell).
4. **Usefulness**: the classifier architecture (``lung_cnn``, width 16) at 64 px, trained
   on real / real + synthetic / synthetic only, a fixed short budget, 3 seeds; test
   macro-F1 (bootstrap interval), the paired bootstrap difference to "real", and the
   shortcut tests (within-source ROC-AUC, lungs blanked, Grad-CAM mass in the lungs).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.data.labels import CLASS_DISPLAY, CLASSES
from ml.generate.data import GanData, SplitArrays
from ml.generate.metrics import (
    bootstrap_distance,
    nearest,
    nearest_shifted,
    precision_recall,
    summary,
    wilson,
)

log = logging.getLogger(__name__)

K_NEIGHBOURS = 3  # Kynkaanniemi et al. 2019


@dataclass
class EvalConfig:
    seeds: tuple[int, ...] = (0, 1, 2)
    usefulness_epochs: int = 10
    usefulness_width: int = 16
    c2st_epochs: int = 8
    n_boot: int = 200
    pr_repeats: int = 50
    skip_usefulness: bool = False
    sample_seed: int = 20
    closest_shown: int = 8
    n_bootstrap_f1: int = 1000


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# --- 1. distribution -------------------------------------------------------------------------


def distribution(feats: dict[str, dict[int, np.ndarray]], config: EvalConfig) -> dict[str, Any]:
    """FD, KID and precision/recall of generated vs test and train vs test, per class
    and pooled. ``feats[set][class]``: features of set "generated", "train", "test"."""
    rows: dict[str, Any] = {}
    groups = [(name, [i]) for i, name in enumerate(CLASSES)] + [("all", list(range(len(CLASSES))))]
    for name, classes in groups:
        test = np.concatenate([feats["test"][c] for c in classes])
        row: dict[str, Any] = {"n_test": len(test)}
        for candidate in ("generated", "train"):
            x = np.concatenate([feats[candidate][c] for c in classes])
            entry: dict[str, Any] = {"n": len(x)}
            if min(len(x), len(test)) >= 2:
                entry["frechet"] = bootstrap_distance("fd", x, test, n_boot=config.n_boot).to_json()
                entry["kid"] = bootstrap_distance("kid", x, test, n_boot=config.n_boot).to_json()
            if min(len(x), len(test)) * 0.8 > K_NEIGHBOURS + 1:
                pr = precision_recall(test, x, k=K_NEIGHBOURS, repeats=config.pr_repeats, seed=1)
                entry["precision"] = pr["precision"].to_json()
                entry["recall"] = pr["recall"].to_json()
            row[candidate] = entry
        rows[name] = row
    return rows


def class_fidelity(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, Any]:
    """Share of images the classifier assigns to their (asked-for / true) class."""
    out: dict[str, Any] = {}
    for name in ("generated", "test"):
        pred = probs[name].argmax(1)
        per = {}
        for c, cls in enumerate(CLASSES):
            sel = labels[name] == c
            k, n = int((pred[sel] == c).sum()), int(sel.sum())
            per[cls] = {"share": k / max(n, 1), "ci95": list(wilson(k, n)), "n": n}
        k, n = int((pred == labels[name]).sum()), len(pred)
        per["all"] = {"share": k / max(n, 1), "ci95": list(wilson(k, n)), "n": n}
        out[name] = per
    return out


# --- 2. memorisation ------------------------------------------------------------------------


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float64)


MAX_SHIFT = 2  # pixels a generated image may be moved by when matched to a training image


def memorisation(
    generated: np.ndarray,
    gen_feats: np.ndarray,
    train: SplitArrays,
    train_feats: np.ndarray,
    test: SplitArrays,
    test_feats: np.ndarray,
    controls: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """Nearest training image of each generated / test / control image, in pixel space
    (allowing shifts of up to MAX_SHIFT pixels) and feature space. ``controls``: name ->
    (images, features) of known copies of training images."""
    out: dict[str, Any] = {}

    def pixel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return nearest_shifted(x[..., 0], train.x[..., 0], MAX_SHIFT)

    def feature(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return nearest(f, train_feats)

    for space in ("pixel", "feature"):
        find = pixel if space == "pixel" else feature
        g_idx, g_d = find(generated if space == "pixel" else gen_feats)
        t_idx, t_d = find(test.x if space == "pixel" else test_feats)
        typical = float(np.median(t_d))
        g_ratio, t_ratio = g_d / typical, t_d / typical
        threshold = float(np.percentile(t_ratio, 1))
        near = np.flatnonzero(g_ratio < threshold)
        caught = {}
        for name, (images, feats) in controls.items():
            _, c_d = find(images if space == "pixel" else feats)
            c_ratio = c_d / typical
            caught[name] = {
                "caught": int((c_ratio < threshold).sum()),
                "n": len(c_ratio),
                "ratio": summary(c_ratio),
            }
        out[space] = {
            "distance": f"Euclidean, smallest over shifts of up to {MAX_SHIFT} px"
            if space == "pixel"
            else "Euclidean on the classifier's features",
            "typical_train_to_test": typical,
            "threshold_ratio": threshold,
            "threshold_rule": "1st percentile of the test images' ratios (real images of other "
            "patients)",
            "test_min_ratio": float(t_ratio.min()),
            "generated_ratio": summary(g_ratio),
            "test_ratio": summary(t_ratio),
            "controls": caught,
            "near_copies": len(near),
            "near_copies_ci95": list(wilson(len(near), len(g_ratio))),
            "below_test_minimum": int((g_ratio < t_ratio.min()).sum()),
            "_g_idx": g_idx,
            "_g_ratio": g_ratio,
            "_t_idx": t_idx,
            "_t_ratio": t_ratio,
        }
    return out


DUPLICATE_RATIO = 0.1  # a test image this close to a training image is the same picture


def cross_split_duplicates(
    test: SplitArrays, train: SplitArrays, t_idx: np.ndarray, t_ratio: np.ndarray
) -> list[dict[str, Any]]:
    """Test images that are the same picture as a training image (pixel ratio below
    DUPLICATE_RATIO): what the real-vs-real reference finds about the split itself."""
    return [
        {
            "test": test.keys[i],
            "test_patient": test.patients[i],
            "train": train.keys[int(t_idx[i])],
            "train_patient": train.patients[int(t_idx[i])],
            "pixel_ratio": round(float(t_ratio[i]), 4),
        }
        for i in np.flatnonzero(t_ratio < DUPLICATE_RATIO)
    ]


def copy_controls(train: SplitArrays, n: int, seed: int) -> dict[str, np.ndarray]:
    """Positive controls, known copies of training images: with a little noise in the
    lungs ("noisy copy"), and moved by 2 pixels with a brightness change ("moved copy")."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(train), size=min(n, len(train)), replace=False)
    x = train.x[idx]
    noisy = np.clip(x + rng.normal(0, 0.02, x.shape) * (x > 0), 0, 1)
    moved = np.roll(x, shift=(2, -2), axis=(1, 2)) * 0.95
    return {
        "noisy copy": noisy.astype(np.float32),
        "moved copy": moved.astype(np.float32),
    }


# --- 3. two-sample test ----------------------------------------------------------------------


def two_sample_test(
    real: np.ndarray, fake: np.ndarray, *, epochs: int, seed: int = 0
) -> dict[str, Any]:
    """Held-out accuracy of a small CNN telling ``fake`` (1) from ``real`` (0)."""
    import keras

    from ml.models.architectures import build_compact_cnn

    rng = np.random.default_rng(seed)
    n = min(len(real), len(fake))
    x = np.concatenate([real[rng.choice(len(real), n, replace=False)], fake[:n]])
    y = np.concatenate([np.zeros(n, np.int32), np.ones(n, np.int32)])
    order = rng.permutation(len(y))
    half = len(y) // 2
    fit_idx, test_idx = order[:half], order[half:]
    net = build_compact_cnn(input_size=x.shape[1], n_classes=2, width=8, seed=seed)
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    t0 = time.perf_counter()
    net.fit(x[fit_idx], y[fit_idx], batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    seconds = time.perf_counter() - t0
    from ml.models.fit import predict_batches

    pred = predict_batches(net, x[test_idx]).argmax(1)
    k = int((pred == y[test_idx]).sum())
    return {
        "accuracy": k / len(test_idx),
        "ci95": list(wilson(k, len(test_idx))),
        "n_fit": len(fit_idx),
        "n_test": len(test_idx),
        "epochs": epochs,
        "model": "compact_cnn width 8, 64 px, Adam 1e-3, batch 32",
        "real": "train split (the images the generator imitates)",
        "seconds": round(seconds, 1),
    }


# --- 4. usefulness ---------------------------------------------------------------------------


def _fit_data(x: np.ndarray, y: np.ndarray, sources: list[str], lungs: np.ndarray | None) -> Any:
    from ml.models.arrays import Arrays
    from ml.models.fit import FitData

    visible = x[..., 0] > 0
    arrays = Arrays(
        x=x.astype(np.float32),
        lungs=lungs if lungs is not None else visible,
        visible=visible,
        used_lungs=np.ones(len(x), bool),
    )
    return FitData(arrays=arrays, y=y.astype(np.int32), sources=list(sources))


def usefulness_run(
    condition: str,
    seed: int,
    data: GanData,
    synthetic: tuple[np.ndarray, np.ndarray],
    config: EvalConfig,
) -> dict[str, Any]:
    """Train lung_cnn at the generator's size on one condition; score the test split."""
    from ml.models.architectures import build_lung_cnn
    from ml.models.fit import FitSettings, fit
    from ml.models.training import evaluate_split

    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    sx, sy = synthetic
    if condition == "real":
        x, y, src = train.x, train.y, train.sources
    elif condition == "real+synthetic":
        x = np.concatenate([train.x, sx])
        y = np.concatenate([train.y, sy])
        src = list(train.sources) + ["synthetic"] * len(sy)
    elif condition == "synthetic":
        x, y, src = sx, sy, ["synthetic"] * len(sy)
    else:
        raise ValueError(f"unknown condition {condition!r}")
    settings = FitSettings(
        epochs=config.usefulness_epochs,
        batch_size=32,
        learning_rate=1e-3,
        patience=config.usefulness_epochs,  # no early stop: a fixed budget
        seed=seed,
        augment=True,
        class_weights=True,
        mask_outside=True,
    )
    net = build_lung_cnn(input_size=data.size, width=config.usefulness_width, seed=seed)
    result = fit(
        net,
        _fit_data(x, y, src, None),
        _fit_data(val.x, val.y, val.sources, val.lungs),
        settings,
        progress=False,
    )
    test_data = _fit_data(test.x, test.y, test.sources, test.lungs)
    metrics, probs = evaluate_split(
        net,
        test_data,
        [CLASSES[i] for i in test.y],
        n_bootstrap=config.n_bootstrap_f1,
        seed=seed,
        shortcut_tests=True,
    )
    s = metrics.shortcuts
    row = {
        "condition": condition,
        "seed": seed,
        "n_train": len(y),
        "macro_f1": metrics.macro_f1,
        "macro_f1_ci": list(metrics.macro_f1_ci) if metrics.macro_f1_ci else None,
        "per_class_f1": {k: v.f1 for k, v in metrics.per_class.items()},
        "epochs_run": result.epochs_run,
        "best_val_loss": min(result.history.get("val_loss", [float("nan")])),
        "seconds": round(result.seconds, 1),
        "load": _load(),
        "shortcuts": s.to_json() if s is not None else None,
        "_probs": probs,
    }
    log.info("%s seed %d: macro-F1 %.3f (%.0f s)", condition, seed, row["macro_f1"], result.seconds)
    return row


def paired_f1_difference(
    y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    """macro-F1(b) - macro-F1(a) on the same test images, percentile bootstrap."""
    from sklearn.metrics import f1_score

    labels = list(range(len(CLASSES)))
    pa, pb = probs_a.argmax(1), probs_b.argmax(1)

    def diff(idx: np.ndarray) -> float:
        fa = f1_score(y[idx], pa[idx], labels=labels, average="macro", zero_division=0)
        fb = f1_score(y[idx], pb[idx], labels=labels, average="macro", zero_division=0)
        return float(fb - fa)

    rng = np.random.default_rng(seed)
    draws = [diff(rng.integers(0, len(y), len(y))) for _ in range(n_boot)]
    return {"value": diff(np.arange(len(y))), "ci95": list(np.percentile(draws, [2.5, 97.5]))}


# --- figures ---------------------------------------------------------------------------------


def _pairs_figure(
    path: Path,
    queries: np.ndarray,
    reference: np.ndarray,
    order: np.ndarray,
    idx: np.ndarray,
    ratio: np.ndarray,
    title: str,
    query_name: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(order)
    fig, axes = plt.subplots(2, max(k, 1), figsize=(1.5 * max(k, 2), 3.6), squeeze=False)
    for col, i in enumerate(order):
        axes[0, col].imshow(queries[i, ..., 0], cmap="gray", vmin=0, vmax=1)
        axes[0, col].set_title(f"ratio {ratio[i]:.2f}", fontsize=7)
        axes[1, col].imshow(reference[idx[i], ..., 0], cmap="gray", vmin=0, vmax=1)
        for row in (0, 1):
            axes[row, col].axis("off")
    axes[0, 0].text(-8, 32, query_name, rotation=90, va="center", ha="right", fontsize=7)
    axes[1, 0].text(-8, 32, "nearest train", rotation=90, va="center", ha="right", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ratio_histogram(path: Path, mem: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, space in zip(axes, ("pixel", "feature"), strict=True):
        m = mem[space]
        bins = np.linspace(0, max(m["_g_ratio"].max(), m["_t_ratio"].max()) * 1.05, 40)
        ax.hist(m["_t_ratio"], bins=bins, alpha=0.6, density=True, label="test (real) -> train")
        ax.hist(m["_g_ratio"], bins=bins, alpha=0.6, density=True, label="generated -> train")
        ax.axvline(m["threshold_ratio"], color="k", ls="--", lw=1, label="near-copy threshold")
        ax.set_title(f"{space} space", fontsize=9)
        ax.set_xlabel("distance to nearest train image / median test distance", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sample_figure(path: Path, images: dict[str, np.ndarray], real: dict[str, np.ndarray]) -> None:
    """Generated (left) next to real test images (right), a row per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = 6
    fig, axes = plt.subplots(
        len(CLASSES), 2 * k, figsize=(1.2 * 2 * k, 1.35 * len(CLASSES)), squeeze=False
    )
    for r, cls in enumerate(CLASSES):
        for c in range(k):
            for part, source in ((0, images[cls]), (1, real[cls])):
                ax = axes[r, part * k + c]
                if c < len(source):
                    ax.imshow(source[c, ..., 0], cmap="gray", vmin=0, vmax=1)
                ax.axis("off")
        axes[r, 0].set_title(CLASS_DISPLAY[cls], fontsize=7, loc="left")
    fig.suptitle("left: SYNTHETIC (generated, fixed seed) | right: real test images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the whole evaluation --------------------------------------------------------------------


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, np.floating | np.integer):
        return value.item()
    return value


def _memorisation_part(
    out_dir: Path,
    gen_x: np.ndarray,
    gen_f: np.ndarray,
    data: GanData,
    train_f: np.ndarray,
    test_f: np.ndarray,
    features: Any,
    config: EvalConfig,
) -> dict[str, Any]:
    train, test = data.splits["train"], data.splits["test"]
    controls = {
        name: (images, features(images))
        for name, images in copy_controls(train, 200, seed=3).items()
    }
    mem = memorisation(gen_x, gen_f, train, train_f, test, test_f, controls)
    for space in ("pixel", "feature"):
        m = mem[space]
        order = np.argsort(m["_g_ratio"])[: config.closest_shown]
        _pairs_figure(
            out_dir / f"closest-{space}.png",
            gen_x,
            train.x,
            order,
            m["_g_idx"],
            m["_g_ratio"],
            f"The {len(order)} generated images closest to a training image ({space} space); "
            f"near-copy threshold: ratio < {m['threshold_ratio']:.2f}",
            "SYNTHETIC",
        )
        order = np.argsort(m["_t_ratio"])[: config.closest_shown]
        _pairs_figure(
            out_dir / f"closest-test-{space}.png",
            test.x,
            train.x,
            order,
            m["_t_idx"],
            m["_t_ratio"],
            f"Real-vs-real reference: the {len(order)} test images closest to a training image "
            f"({space} space)",
            "test (real)",
        )
    _ratio_histogram(out_dir / "memorisation-ratios.png", mem)
    pixel = mem["pixel"]
    mem["cross_split_duplicates"] = cross_split_duplicates(
        test, train, pixel["_t_idx"], pixel["_t_ratio"]
    )
    return mem


def _usefulness_part(generator: Any, data: GanData, config: EvalConfig) -> dict[str, Any]:
    train, test = data.splits["train"], data.splits["test"]
    per_class = round(len(train) / len(CLASSES))
    runs = []
    for seed in config.seeds:
        synthetic = generator.sample_classes(dict.fromkeys(CLASSES, per_class), seed=100 + seed)
        for condition in ("real", "real+synthetic", "synthetic"):
            runs.append(usefulness_run(condition, seed, data, synthetic, config))
    diffs = []
    for seed in config.seeds:
        by = {r["condition"]: r for r in runs if r["seed"] == seed}
        for condition in ("real+synthetic", "synthetic"):
            d = paired_f1_difference(
                test.y, by["real"]["_probs"], by[condition]["_probs"], 1000, seed
            )
            diffs.append({"seed": seed, "condition": condition, **d})
    return {
        "runs": runs,
        "differences_to_real": diffs,
        "synthetic_per_class": per_class,
        "budget": f"{config.usefulness_epochs} epochs, no early stop, lung_cnn width "
        f"{config.usefulness_width} at {data.size} px, batch 32, Adam 1e-3 (halved on "
        "val-loss plateaus, best val-loss weights kept), class weights, small geometric "
        "augmentation",
    }


def evaluate_generator(
    data: GanData,
    model_path: Path,
    out_dir: Path,
    config: EvalConfig | None = None,
    *,
    classifier: Path | None = None,
    progress: bool = True,
    command: str = "",
) -> Path:
    """Run every measurement, write ``results.json``, figures and ``report.md``."""
    from ml.generate.features import ClassifierFeatures
    from ml.generate.report import write_report
    from ml.generate.sampler import Generator

    config = config or EvalConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    load_start = _load()
    generator = Generator.load(model_path)
    if generator.size != data.size:
        raise ValueError(f"The generator makes {generator.size} px images; data are {data.size} px")
    features = ClassifierFeatures(classifier) if classifier else ClassifierFeatures()
    train, test = data.splits["train"], data.splits["test"]
    counts = {cls: int((train.y == i).sum()) for i, cls in enumerate(CLASSES)}
    gen_x, gen_y = generator.sample_classes(counts, seed=config.sample_seed)
    log.info("sampled %d images; computing features", len(gen_y))
    gen_f, gen_p = features.both(gen_x)
    train_f, _ = features.both(train.x)
    test_f, test_p = features.both(test.x)
    feats = {
        "generated": {c: gen_f[gen_y == c] for c in range(len(CLASSES))},
        "train": {c: train_f[train.y == c] for c in range(len(CLASSES))},
        "test": {c: test_f[test.y == c] for c in range(len(CLASSES))},
    }
    results: dict[str, Any] = {
        "generator": {
            "path": str(model_path),
            "sha256": generator.sha256,
            "chosen_epoch": generator.card.get("selection", {}).get("chosen_epoch"),
            "image_size": generator.size,
        },
        "features": features.describe(),
        "counts": data.counts(),
        "generated_per_class": counts,
        "config": asdict(config),
        "distribution": distribution(feats, config),
        "class_fidelity": class_fidelity(
            {"generated": gen_p, "test": test_p}, {"generated": gen_y, "test": test.y}
        ),
    }
    results["memorisation"] = _memorisation_part(
        out_dir, gen_x, gen_f, data, train_f, test_f, features, config
    )
    shown = {
        cls: generator.sample(cls, 6, seed=config.sample_seed + 1)[..., None] for cls in CLASSES
    }
    real_shown = {cls: test.of_class(i)[:6] for i, cls in enumerate(CLASSES)}
    _sample_figure(out_dir / "samples.png", shown, real_shown)
    shuffled = gen_x[np.random.default_rng(5).permutation(len(gen_x))]
    results["two_sample_test"] = two_sample_test(train.x, shuffled, epochs=config.c2st_epochs)
    log.info("two-sample test accuracy %.3f", results["two_sample_test"]["accuracy"])
    if not config.skip_usefulness:
        results["usefulness"] = _usefulness_part(generator, data, config)
    results["seconds_total"] = round(time.perf_counter() - began, 1)
    results["load_average"] = {"start": load_start, "end": _load()}
    results["cpus"] = os.cpu_count()
    results["command"] = command
    clean = _strip(results)
    (out_dir / "results.json").write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return write_report(clean, generator.card, out_dir)

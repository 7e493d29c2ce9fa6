"""The evaluation study: how split, data size and hyper-parameters move precision/recall/F1.

``python -m ml study run --data DIR... --out DIR`` trains a grid of compact CNNs and reports
macro-F1 and per-class precision, recall and F1 with their spread over seeds. One factor
is varied at a time around a baseline (one-factor-at-a-time design, not a full factorial):

========================  ====================================  ==========================
factor                    values                                baseline
========================  ====================================  ==========================
``train_fraction``        0.6 / 0.7 / 0.8 of the images          0.7 (val = test = 0.15)
``data_fraction``         25 / 50 / 100 % of that training split 100 %
``learning_rate``         1e-3 / 3e-4                            1e-3
``augment``               on / off                               on
``input_size``            64 / 128 px                            64 px
``split_level``           patient / image                        patient
========================  ====================================  ==========================

A configuration shared by several factors (the baseline) is trained once per seed and
reused. The seed moves everything random: the split, the subsample, the initial weights
and the data order, so the spread is the spread a data scientist would see re-running
the experiment, not only the initialisation noise.

Bounded compute (2 shared CPU cores): the study trains at 64 px (128 px only for the
input-size factor), at most ``max_epochs`` epochs with early stopping on validation loss
(best weights restored), no bootstrap (the spread over seeds is the interval of
interest). Images are preprocessed once per input size with the serving function and
cached on disk (``--cache``). Every run is appended to ``runs.json`` as it finishes;
an interrupted study resumes where it stopped.

With a train fraction ``f`` the validation and test fractions are both ``(1 - f) / 2``,
so the test split changes with ``f``: each run is scored on its own test split.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.data.labels import CLASSES
from ml.data.loaders import Dataset
from ml.data.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ml.models.arrays import Arrays

log = logging.getLogger(__name__)

# One run as runs.json stores it (configuration, seed, figures): written by run_one,
# read back by the report, so a JSON object rather than a dataclass.
Run = dict[str, Any]
# factor -> (attribute of RunConfig, values, label of each value)
Factor = tuple[str, tuple[Any, ...], tuple[str, ...]]


@dataclass(frozen=True)
class RunConfig:
    """One training configuration of the study (without its seed)."""

    train_fraction: float = 0.7
    data_fraction: float = 1.0
    learning_rate: float = 1e-3
    augment: bool = True
    input_size: int = 64
    split_level: str = "patient"
    # Against shortcuts. Defaults are the v1 procedure, so old keys stay valid.
    preprocessing: int = 1
    mask_outside: bool = False
    balanced_sampling: bool = False
    acquisition_augment: bool = False
    lung_penalty: float = 0.0
    hold_out_source: str = ""  # leave-one-source-out: train without it, test on all of it

    def key(self) -> str:
        key = (
            f"tf{self.train_fraction:g}-df{self.data_fraction:g}-lr{self.learning_rate:g}-"
            f"aug{int(self.augment)}-px{self.input_size}-{self.split_level}"
        )
        if self.preprocessing != 1 or self.balanced_sampling or self.acquisition_augment:
            key += (
                f"-pre{self.preprocessing}-mask{int(self.mask_outside)}"
                f"-bal{int(self.balanced_sampling)}-acq{int(self.acquisition_augment)}"
                f"-pen{self.lung_penalty:g}"
            )
        elif self.mask_outside or self.lung_penalty:
            key += f"-mask{int(self.mask_outside)}-pen{self.lung_penalty:g}"
        if self.hold_out_source:
            key += f"-loso-{self.hold_out_source}"
        return key


FACTORS: dict[str, Factor] = {
    "train_fraction": ("train_fraction", (0.6, 0.7, 0.8), ("60%", "70%", "80%")),
    "data_fraction": ("data_fraction", (0.25, 0.5, 1.0), ("25%", "50%", "100%")),
    "learning_rate": ("learning_rate", (1e-3, 3e-4), ("1e-3", "3e-4")),
    "augment": ("augment", (True, False), ("on", "off")),
    "input_size": ("input_size", (64, 128), ("64 px", "128 px")),
    "split_level": ("split_level", ("patient", "image"), ("patient", "image")),
}


@dataclass
class StudyPlan:
    baseline: RunConfig
    factors: dict[str, Factor]
    seeds: tuple[int, ...]
    max_epochs: int = 12
    patience: int = 3
    batch_size: int = 32
    width: int = 16
    min_epochs: int = 0  # no early stop before this epoch (the fit loop's min_epochs)

    def configs(self) -> list[RunConfig]:
        """Every distinct configuration, the baseline first (shared runs appear once)."""
        seen: dict[str, RunConfig] = {self.baseline.key(): self.baseline}
        for attribute, values, _ in self.factors.values():
            for value in values:
                config = replace(self.baseline, **{attribute: value})
                seen.setdefault(config.key(), config)
        return list(seen.values())


# The anti-shortcut factors, varied one at a time around the shortcut baseline.
SHORTCUT_FACTORS: dict[str, Factor] = {
    "preprocessing": ("preprocessing", (1, 2), ("v1 whole image", "v2 lung crop")),
    "mask_outside": ("mask_outside", (False, True), ("off", "on")),
    "balanced_sampling": ("balanced_sampling", (False, True), ("off", "on")),
    "acquisition_augment": ("acquisition_augment", (False, True), ("off", "on")),
    "lung_penalty": ("lung_penalty", (0.0, 1.0), ("0", "1")),
    "hold_out_source": (
        "hold_out_source",
        ("", "pediatric-pneumonia", "nih-cxr14"),
        ("none", "pediatric held out", "NIH held out"),
    ),
}
SHORTCUT_BASELINE = RunConfig(
    input_size=96,
    learning_rate=1e-3,
    preprocessing=2,
    mask_outside=False,
    balanced_sampling=True,
    acquisition_augment=True,
)


def default_plan(seeds: Sequence[int] = (0, 1, 2), *, max_epochs: int = 12) -> StudyPlan:
    return StudyPlan(RunConfig(), dict(FACTORS), tuple(seeds), max_epochs=max_epochs)


def shortcut_plan(seeds: Sequence[int] = (0, 1, 2), *, max_epochs: int = 12) -> StudyPlan:
    """The measures against shortcuts: preprocessing, masking, sampling, augmentation, the
    lung penalty and leave-one-source-out, one factor at a time around the shortcut
    baseline."""
    # Patience 6: with balanced sampling and acquisition augmentation the validation loss
    # is noisy in the first epochs; patience 3 stopped runs before they had learnt anything.
    # min_epochs 10 as `make train`'s 15 (scaled to the shorter runs): the validation loss
    # of the first epochs says little under balanced sampling and augmentation.
    return StudyPlan(
        SHORTCUT_BASELINE,
        dict(SHORTCUT_FACTORS),
        tuple(seeds),
        max_epochs=max_epochs,
        patience=6,
        min_epochs=10,
    )


def quick_plan() -> StudyPlan:
    """Every factor, tiny: 32/48 px, 40/50% train, one seed, one epoch (tests, fixtures)."""
    factors = dict(FACTORS)
    factors["input_size"] = ("input_size", (32, 48), ("32 px", "48 px"))
    # 18 images: larger held-out splits, so an image-level stratified split stays possible.
    factors["train_fraction"] = ("train_fraction", (0.4, 0.5), ("40%", "50%"))
    return StudyPlan(
        RunConfig(train_fraction=0.4, input_size=32),
        factors,
        (0,),
        max_epochs=1,
        patience=1,
        batch_size=8,
        width=4,
    )


def _spec(config: RunConfig) -> PreprocessSpec:
    return PreprocessSpec(
        input_size=config.input_size,
        version=config.preprocessing,
        mask_outside=config.mask_outside if config.preprocessing >= 2 else False,
    )


def _arrays(
    dataset: Dataset, config: RunConfig, cache: Path | None, progress: bool, segmenter: Any
) -> Arrays:
    from ml.models.arrays import prepare_arrays

    return prepare_arrays(
        dataset.records, _spec(config), segmenter=segmenter, cache=cache, progress=progress
    )


def _split(dataset: Dataset, config: RunConfig, seed: int) -> dict[str, list[int]]:
    from ml.models.training import resolve_split

    records = dataset.records
    holdout = (1.0 - config.train_fraction) / 2
    if not config.hold_out_source:
        return resolve_split(
            records,
            val_fraction=holdout,
            test_fraction=holdout,
            seed=seed,
            level=config.split_level,
            train_fraction_used=config.data_fraction,
        )
    # Leave one source out: the held-out source is the whole test set; the rest is split
    # into train and val (by patient) in the usual proportions.
    kept = [i for i, r in enumerate(records) if r.source != config.hold_out_source]
    if len(kept) == len(records):
        raise ValueError(f"No images of source {config.hold_out_source!r} to hold out.")
    inner = resolve_split(
        [records[i] for i in kept],
        val_fraction=holdout,
        test_fraction=holdout,
        seed=seed,
        level=config.split_level,
        train_fraction_used=config.data_fraction,
    )
    return {
        "train": [kept[i] for i in inner["train"] + inner["test"]],
        "val": [kept[i] for i in inner["val"]],
        "test": [i for i, r in enumerate(records) if r.source == config.hold_out_source],
    }


def _class_rows(per_class: Any) -> dict[str, Any]:
    return {
        name: {
            "precision": row.precision,
            "recall": row.recall,
            "f1": row.f1,
            "support": row.support,
        }
        for name, row in per_class.items()
    }


def run_one(dataset: Dataset, arrays: Arrays, config: RunConfig, seed: int, plan: StudyPlan) -> Run:
    """Train and test one configuration with one seed (the fit loop of
    ``ml classifier train``)."""
    import keras

    from ml.models.architectures import build_compact_cnn
    from ml.models.fit import FitSettings, fit
    from ml.models.training import evaluate_split, fit_data

    records = dataset.records
    index = _split(dataset, config, seed)
    y_all = np.array([CLASSES.index(r.label) for r in records], dtype=np.int32)
    train, val, test = (
        fit_data(arrays, records, index[s], y_all) for s in ("train", "val", "test")
    )
    settings = FitSettings(
        epochs=plan.max_epochs,
        batch_size=plan.batch_size,
        learning_rate=config.learning_rate,
        patience=plan.patience,
        seed=seed,
        augment=config.augment,
        balanced_sampling=config.balanced_sampling,
        acquisition_augment=config.acquisition_augment,
        lung_penalty=config.lung_penalty,
        mask_outside=config.mask_outside and config.preprocessing >= 2,
        min_epochs=plan.min_epochs,
    )
    model = build_compact_cnn(input_size=config.input_size, width=plan.width, seed=seed)
    result = fit(model, train, val, settings, progress=False)
    metrics, _ = evaluate_split(
        model, test, [records[i].label for i in index["test"]], n_bootstrap=0, seed=seed
    )
    keras.backend.clear_session()
    row = {
        "key": config.key(),
        "seed": seed,
        "config": asdict(config),
        "counts": {k: len(v) for k, v in index.items()},
        "epochs_run": result.epochs_run,
        "seconds": round(result.seconds, 1),
        "macro_f1": metrics.macro_f1,
        "accuracy": metrics.accuracy,
        "per_class": _class_rows(metrics.per_class),
        "per_source": {
            source: {
                "n": sub.n,
                "accuracy": sub.accuracy,
                "macro_f1_present": sub.macro_f1_present,
                "per_class": _class_rows(sub.per_class),
            }
            for source, sub in (metrics.per_source or {}).items()
        },
    }
    if metrics.shortcuts is not None:
        row["shortcuts"] = shortcut_row(metrics.shortcuts)
    return row


def shortcut_row(shortcuts: Any) -> dict[str, Any]:
    """The shortcut figures of one run, flat (study tables read these keys)."""
    data = shortcuts.to_json()
    flat: dict[str, float | None] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[prefix] = float(value)

    walk("", data)
    return flat


def run_study(
    dataset: Dataset,
    out_dir: Path,
    plan: StudyPlan,
    *,
    cache: Path | None = None,
    progress: bool = True,
    only: Sequence[str] | None = None,
) -> list[Run]:
    """Run every (configuration, seed) not yet in ``out_dir/runs.json``; returns all rows.

    ``only`` restricts the study to some factors (plus the baseline they vary around).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_path = out_dir / "runs.json"
    done: list[Run] = json.loads(runs_path.read_text())["runs"] if runs_path.is_file() else []
    finished = {(r["key"], r["seed"]) for r in done}
    if only:
        plan = replace(plan, factors={k: v for k, v in plan.factors.items() if k in only})
    configs = plan.configs()
    # Seed-major order: if the study is stopped early, every configuration has its
    # first seeds rather than some configurations all seeds and others none.
    todo = [(c, s) for s in plan.seeds for c in configs if (c.key(), s) not in finished]
    log.info(
        "study: %d configurations x %d seeds, %d runs to do (%d already done)",
        len(configs),
        len(plan.seeds),
        len(todo),
        len(done),
    )
    arrays: dict[str, Arrays] = {}
    segmenter = None
    study_start = time.perf_counter()
    for n, (config, seed) in enumerate(todo, 1):
        spec_key = json.dumps(_spec(config).to_dict(), sort_keys=True)
        if spec_key not in arrays:
            if segmenter is None:
                from ml.models.training import load_segmenter

                segmenter = load_segmenter(required=config.preprocessing >= 2)
            arrays[spec_key] = _arrays(dataset, config, cache, progress, segmenter)
        row = run_one(dataset, arrays[spec_key], config, seed, plan)
        done.append(row)
        runs_path.write_text(json.dumps(_header(dataset, plan) | {"runs": done}, indent=1))
        log.info(
            "run %d/%d %s seed %d: macro-F1 %.3f, %d epochs, %.0f s (study %.0f s)",
            n,
            len(todo),
            config.key(),
            seed,
            row["macro_f1"],
            row["epochs_run"],
            row["seconds"],
            time.perf_counter() - study_start,
        )
    return done


def _header(dataset: Dataset, plan: StudyPlan) -> dict[str, Any]:
    return {
        "data": dataset.summary(),
        "plan": {
            "baseline": asdict(plan.baseline),
            "factors": {k: list(v[1]) for k, v in plan.factors.items()},
            "seeds": list(plan.seeds),
            "max_epochs": plan.max_epochs,
            "patience": plan.patience,
            "batch_size": plan.batch_size,
            "width": plan.width,
            "min_epochs": plan.min_epochs,
        },
    }


# ----------------------------------------------------------------------------- report


def _stats(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "n": len(array),
        "mean": float(array.mean()),
        "sd": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
    }


def summarise(runs: Sequence[Run], plan: StudyPlan) -> dict[str, Any]:
    """Per factor and value: mean, sd, min and max over seeds of every figure."""
    by_key: dict[str, list[Run]] = {}
    for row in runs:
        by_key.setdefault(row["key"], []).append(row)
    summary: dict[str, list[dict[str, Any]]] = {}
    for factor, (attribute, values, labels) in plan.factors.items():
        rows = []
        for value, label in zip(values, labels, strict=True):
            key = replace(plan.baseline, **{attribute: value}).key()
            group = by_key.get(key, [])
            if not group:
                continue
            entry = {
                "value": value,
                "label": label,
                "key": key,
                "seeds": sorted(r["seed"] for r in group),
                "macro_f1": _stats([r["macro_f1"] for r in group]),
                "accuracy": _stats([r["accuracy"] for r in group]),
                "epochs": _stats([r["epochs_run"] for r in group]),
                "seconds": _stats([r["seconds"] for r in group]),
                "n_test": _stats([r["counts"]["test"] for r in group]),
                "n_train": _stats([r["counts"]["train"] for r in group]),
                "per_class": {
                    name: {
                        metric: _stats([r["per_class"][name][metric] for r in group])
                        for metric in ("precision", "recall", "f1")
                    }
                    for name in CLASSES
                },
                "per_source": {},
            }
            sources = sorted({s for r in group for s in r["per_source"]})
            for source in sources:
                rows_s = [r["per_source"][source] for r in group if source in r["per_source"]]
                entry["per_source"][source] = {
                    "accuracy": _stats([s["accuracy"] for s in rows_s]),
                    "macro_f1_present": _stats([s["macro_f1_present"] for s in rows_s]),
                    "recall": {
                        name: _stats([s["per_class"][name]["recall"] for s in rows_s])
                        for name in CLASSES
                        if any(s["per_class"][name]["support"] for s in rows_s)
                    },
                }
            rows.append(entry)
        summary[factor] = rows
    return summary


def _ms(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.3f} ± {stats['sd']:.3f}"


def _range(stats: dict[str, float]) -> str:
    return f"{stats['min']:.3f}-{stats['max']:.3f}"


def _figure_factors(
    summary: dict[str, Any], runs: Sequence[Run], metric: str = "macro_f1"
) -> Figure:
    from matplotlib.figure import Figure

    factors = [f for f in summary if summary[f]]
    fig = Figure(figsize=(3.0 * len(factors), 3.2), layout="constrained")
    axes = fig.subplots(1, len(factors), sharey=True, squeeze=False)[0]
    by_key: dict[str, list[Run]] = {}
    for row in runs:
        by_key.setdefault(row["key"], []).append(row)
    for ax, factor in zip(axes, factors, strict=True):
        entries = summary[factor]
        positions = np.arange(len(entries))
        for pos, entry in zip(positions, entries, strict=True):
            values = [r[metric] for r in by_key[entry["key"]]]
            ax.scatter(
                np.full(len(values), pos) + np.linspace(-0.08, 0.08, len(values)),
                values,
                s=14,
                color="#1f77b4",
                alpha=0.7,
                zorder=3,
            )
            ax.errorbar(
                pos + 0.22,
                entry[metric]["mean"],
                yerr=entry[metric]["sd"],
                fmt="s",
                color="black",
                capsize=4,
                zorder=4,
            )
        ax.set_xticks(positions, [e["label"] for e in entries])
        ax.set_xlim(-0.5, len(entries) - 0.3)
        ax.set_title(factor.replace("_", " "))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test macro-F1" if metric == "macro_f1" else metric)
    fig.suptitle("Study: test macro-F1 per run (dots) and mean ± sd over seeds (squares)")
    return fig


def _figure_per_class(summary: dict[str, Any]) -> Figure:
    from matplotlib.figure import Figure

    factors = [f for f in summary if summary[f]]
    fig = Figure(figsize=(3.0 * len(factors), 7.5), layout="constrained")
    grid = fig.subplots(3, len(factors), sharey=True, squeeze=False)
    colours = {"covid19": "#d62728", "pneumonia": "#1f77b4", "normal": "#2ca02c"}
    markers = {"covid19": "o", "pneumonia": "s", "normal": "^"}
    for col, factor in enumerate(factors):
        entries = summary[factor]
        positions = np.arange(len(entries))
        for row, metric in enumerate(("precision", "recall", "f1")):
            ax = grid[row][col]
            for offset, name in zip((-0.15, 0.0, 0.15), CLASSES, strict=True):
                means = [e["per_class"][name][metric]["mean"] for e in entries]
                sds = [e["per_class"][name][metric]["sd"] for e in entries]
                ax.errorbar(
                    positions + offset,
                    means,
                    yerr=sds,
                    fmt=markers[name],
                    color=colours[name],
                    capsize=3,
                    label=name,
                )
            ax.set_xticks(positions, [e["label"] for e in entries])
            ax.grid(axis="y", alpha=0.3)
            if row == 0:
                ax.set_title(factor.replace("_", " "))
            if col == 0:
                ax.set_ylabel(metric)
    grid[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Per-class precision / recall / F1: mean ± sd over seeds")
    return fig


def write_report(runs: Sequence[Run], plan: StudyPlan, out_dir: Path, *, title: str) -> Path:
    """``report.md``, ``summary.json`` and the PNG plots next to ``runs.json``."""
    out_dir = Path(out_dir)
    summary = summarise(runs, plan)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    fig = _figure_factors(summary, runs)
    fig.savefig(out_dir / "study-macro-f1.png", dpi=80)
    fig = _figure_per_class(summary)
    fig.savefig(out_dir / "study-per-class.png", dpi=70)
    total = sum(r["seconds"] for r in runs)
    lines = [
        f"# {title}",
        "",
        f"{len(runs)} training runs ({len({r['key'] for r in runs})} configurations), "
        f"seeds {', '.join(map(str, plan.seeds))}; training time {total / 60:.1f} min in all "
        "(fit only, excluding preprocessing). Baseline: "
        + ", ".join(f"{k} {v}" for k, v in asdict(plan.baseline).items())
        + f"; compact CNN width {plan.width}, at most {plan.max_epochs} epochs, early "
        f"stopping patience {plan.patience}. Each run is scored on its own test split; "
        "mean ± sd (sample sd) and min-max over seeds.",
        "",
        "![macro-F1 per factor](study-macro-f1.png)",
        "",
        "## Macro-F1 per factor",
        "",
        "| factor | value | runs | n train | n test | epochs | macro-F1 mean ± sd | min-max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for factor, entries in summary.items():
        for e in entries:
            lines.append(
                f"| {factor} | {e['label']} | {e['macro_f1']['n']} | "
                f"{e['n_train']['mean']:.0f} | {e['n_test']['mean']:.0f} | "
                f"{e['epochs']['mean']:.1f} | {_ms(e['macro_f1'])} | {_range(e['macro_f1'])} |"
            )
    lines += [
        "",
        "## Per-class precision / recall / F1 (mean ± sd over seeds)",
        "",
        "![per-class figures](study-per-class.png)",
        "",
    ]
    header = "| factor | value | " + " | ".join(
        f"{c} {m}" for c in CLASSES for m in ("P", "R", "F1")
    )
    lines += [header + " |", "|---|---|" + "---|" * 9]
    for factor, entries in summary.items():
        for e in entries:
            cells = [
                _ms(e["per_class"][c][m]) for c in CLASSES for m in ("precision", "recall", "f1")
            ]
            lines.append(f"| {factor} | {e['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Per source (the confounder)",
        "",
        "Accuracy and recall within each data source, mean ± sd over seeds. The paediatric "
        "set holds only pneumonia and normal, the adult NIH set only normal; "
        "covid-chestxray holds nearly all COVID-19 images and few others.",
        "",
        "| factor | value | source | accuracy | recall per class present |",
        "|---|---|---|---|---|",
    ]
    for factor, entries in summary.items():
        for e in entries:
            for source, s in e["per_source"].items():
                recalls = ", ".join(f"{c} {_ms(v)}" for c, v in s["recall"].items())
                lines.append(
                    f"| {factor} | {e['label']} | {source} | {_ms(s['accuracy'])} | {recalls} |"
                )
    lines += _shortcut_lines(runs, plan)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


SHORTCUT_COLUMNS = (
    ("nih_pneumonia_auroc.auroc", "NIH pneumonia AUROC"),
    ("covid_chestxray_covid19_auroc.auroc", "covid-chestxray COVID AUROC"),
    ("lungs_blanked_accuracy", "lungs-blanked acc."),
    ("lungs_only_accuracy", "lungs-only acc."),
    ("min_mass_in_lungs", "min Grad-CAM mass in lungs"),
)


def _shortcut_value(row: Run, key: str) -> float | None:
    figures = row.get("shortcuts") or {}
    if key == "min_mass_in_lungs":
        masses = [
            v
            for k, v in figures.items()
            if k.startswith("gradcam_mass_in_lungs.") and k.endswith(".mean")
        ]
        return min(masses) if masses else None
    return figures.get(key)


def _shortcut_lines(runs: Sequence[Run], plan: StudyPlan) -> list[str]:
    """Shortcut tests per factor value (mean ± sd over seeds) and leave-one-source-out."""
    if not any(r.get("shortcuts") for r in runs):
        return []
    by_key: dict[str, list[Run]] = {}
    for row in runs:
        by_key.setdefault(row["key"], []).append(row)
    lines = [
        "",
        "## Shortcut tests (each run's test split; mean ± sd over seeds)",
        "",
        "Targets: within-source AUROC >= 0.80, lungs-blanked accuracy <= 0.45 (chance is "
        "about 0.33), Grad-CAM mass in the lungs >= 0.70 on every source.",
        "",
        "| factor | value | " + " | ".join(label for _, label in SHORTCUT_COLUMNS) + " |",
        "|---|---|" + "---|" * len(SHORTCUT_COLUMNS),
    ]
    for factor, (attribute, values, labels) in plan.factors.items():
        if attribute == "hold_out_source":
            continue
        for value, label in zip(values, labels, strict=True):
            group = by_key.get(replace(plan.baseline, **{attribute: value}).key(), [])
            if not group:
                continue
            cells = []
            for key, _ in SHORTCUT_COLUMNS:
                found = [v for r in group if (v := _shortcut_value(r, key)) is not None]
                cells.append(_ms(_stats(found)) if found else "-")
            lines.append(f"| {factor} | {label} | " + " | ".join(cells) + " |")
    loso = plan.factors.get("hold_out_source")
    if loso:
        lines += [
            "",
            "## Leave one source out",
            "",
            "Trained without the source, tested on all of its images (mean ± sd over seeds).",
            "",
            "| held out | runs | n test | accuracy | recall per class present | NIH AUROC |",
            "|---|---|---|---|---|---|",
        ]
        for value, label in zip(loso[1], loso[2], strict=True):
            if not value:
                continue
            group = by_key.get(replace(plan.baseline, hold_out_source=value).key(), [])
            if not group:
                continue
            subs = [r["per_source"][value] for r in group if value in r["per_source"]]
            recalls = ", ".join(
                f"{c} {_ms(_stats([s['per_class'][c]['recall'] for s in subs]))}"
                for c in CLASSES
                if subs and subs[0]["per_class"][c]["support"]
            )
            aucs = [v for r in group if (v := _shortcut_value(r, "nih_pneumonia_auroc.auroc"))]
            lines.append(
                f"| {label} | {len(group)} | {group[0]['counts']['test']} | "
                f"{_ms(_stats([s['accuracy'] for s in subs])) if subs else '-'} | {recalls} | "
                f"{_ms(_stats(aucs)) if aucs else '-'} |"
            )
    return lines

"""Evaluate a CT model on the held-out slices (``python -m ml ct evaluate``).

Everything goes through the serving path (:class:`ml.ct.segmenter.CTSegmenter`, masks at
each slice's original size) on slices never used for training or for any choice:

* zenodo **test volume groups**: lungs and infection, Dice and IoU;
* MedSeg **test split** (the given one): infection (= ground-glass | consolidation),
  ground-glass, consolidation.

For each figure: the mean per slice with a 95 % percentile bootstrap interval over
slices, for zenodo also resampling whole volume groups (slices of one volume are not
independent), and the pooled Dice (all pixels of the split together; interval from the
slice bootstrap). A slice whose reference mask for a class is empty has no Dice for
that class and is left out of that class's per-slice mean (its pixels still count in
the pooled Dice); the report gives the number of slices behind each mean.

Also: the cross-set figure (a model trained on zenodo only, its infection Dice on the
MedSeg test split), the lung-area bar for "no lung tissue found" (predicted lung share
on the test slices vs on non-chest images that ship with installed packages), contact
sheets, and the report (``report.md`` + ``metrics.json``).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.ct.data import MEDSEG, ZENODO, CTSample, read_gray, references

if TYPE_CHECKING:
    from ml.ct.segmenter import CTResult, CTSegmenter
    from ml.ct.training import CTTrainConfig

log = logging.getLogger(__name__)

TARGETS = {
    "zenodo_lung_dice": 0.95,
    "medseg_infection_dice": 0.74,
}
PUBLISHED = {"Semi-Inf-Net": 0.739, "Inf-Net": 0.682}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool masks; 1.0 when both are empty."""
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & truth)) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = int(np.count_nonzero(pred | truth))
    return 1.0 if union == 0 else int(np.count_nonzero(pred & truth)) / union


def _percentile_interval(values: np.ndarray) -> list[float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def bootstrap_slices(values: Sequence[float], n: int, seed: int) -> list[float] | None:
    """95 % percentile bootstrap interval of the mean over slices (scipy.stats.bootstrap)."""
    array = np.asarray(values, dtype=np.float64)
    if n <= 0 or len(array) < 2 or np.ptp(array) == 0:
        return None
    from scipy import stats

    result = stats.bootstrap(
        (array,), np.mean, n_resamples=n, method="percentile", random_state=seed
    )
    ci = result.confidence_interval
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def bootstrap_groups(
    values: Sequence[float], groups: Sequence[str], n: int, seed: int
) -> list[float] | None:
    """95 % interval of the mean per slice, resampling whole groups (None: < 2 groups)."""
    names = sorted(set(groups))
    if n <= 0 or len(names) < 2:
        return None
    array = np.asarray(values, dtype=np.float64)
    index = {g: np.flatnonzero(np.asarray(groups) == g) for g in names}
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    for b in range(n):
        rows = np.concatenate([index[names[d]] for d in rng.integers(0, len(names), len(names))])
        means[b] = array[rows].mean()
    return _percentile_interval(means)


def pooled_dice(
    tp: np.ndarray, pred: np.ndarray, truth: np.ndarray, n: int, seed: int
) -> dict[str, Any]:
    """Dice over all pixels of the split, with a bootstrap interval over slices."""
    value = 2 * tp.sum() / max(pred.sum() + truth.sum(), 1)
    ci = None
    if n > 0 and len(tp) >= 2:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(tp), (n, len(tp)))
        values = 2 * tp[draws].sum(1) / np.maximum(pred[draws].sum(1) + truth[draws].sum(1), 1)
        ci = _percentile_interval(values)
    return {"value": round(float(value), 4), "ci95": ci}


def summarise(
    rows: list[dict[str, Any]], kind: str, n_bootstrap: int, seed: int, by_group: bool
) -> dict[str, Any]:
    """Per-slice mean Dice/IoU of ``kind`` with intervals, and the pooled Dice."""
    scored = [r for r in rows if r[f"{kind}_ref"] > 0]
    out: dict[str, Any] = {
        "slices": len(scored),
        "slices_without_reference": len(rows) - len(scored),
    }
    for metric in ("dice", "iou"):
        values = [r[f"{kind}_{metric}"] for r in scored]
        if not values:
            out[metric] = None
            continue
        entry: dict[str, Any] = {
            "mean": round(float(np.mean(values)), 4),
            "median": round(float(np.median(values)), 4),
            "ci95_slices": bootstrap_slices(values, n_bootstrap, seed),
        }
        if by_group:
            entry["ci95_groups"] = bootstrap_groups(
                values, [r["group"] for r in scored], n_bootstrap, seed
            )
            entry["groups"] = len({r["group"] for r in scored})
        out[metric] = entry
    out["pooled_dice"] = pooled_dice(
        np.asarray([r[f"{kind}_tp"] for r in rows], np.float64),
        np.asarray([r[f"{kind}_pred"] for r in rows], np.float64),
        np.asarray([r[f"{kind}_ref"] for r in rows], np.float64),
        n_bootstrap,
        seed,
    )
    return out


def _score_row(row: dict[str, Any], kind: str, pred: np.ndarray, truth: np.ndarray) -> None:
    row[f"{kind}_dice"] = round(dice(pred, truth), 4)
    row[f"{kind}_iou"] = round(iou(pred, truth), 4)
    row[f"{kind}_tp"] = int(np.count_nonzero(pred & truth))
    row[f"{kind}_pred"] = int(np.count_nonzero(pred))
    row[f"{kind}_ref"] = int(np.count_nonzero(truth))


def segment_samples(
    segmenter: CTSegmenter, samples: Sequence[CTSample], batch: int = 16
) -> tuple[list[dict[str, Any]], list[CTResult], list[float]]:
    """Per-slice scores, results and per-slice latency (ms, batched call / slices)."""
    rows: list[dict[str, Any]] = []
    results: list[CTResult] = []
    latencies: list[float] = []
    for start in range(0, len(samples), batch):
        chunk = list(samples[start : start + batch])
        grays = [read_gray(s.image) for s in chunk]
        began = time.perf_counter()
        chunk_results = segmenter.segment_batch(grays)
        latencies += [(time.perf_counter() - began) * 1000 / len(chunk)] * len(chunk)
        for sample, gray, result in zip(chunk, grays, chunk_results, strict=True):
            ref = references(sample)
            row: dict[str, Any] = {
                "key": sample.key,
                "group": sample.group,
                "height": gray.shape[0],
                "width": gray.shape[1],
                "lungs_found": result.lungs_found,
                "predicted_lung_fraction": round(result.lung_area / gray.size, 4),
                "percent_affected": result.percent_affected,
            }
            if ref.lungs is not None:
                _score_row(row, "lungs", result.lungs, ref.lungs)
                row["reference_percent_affected"] = round(
                    100
                    * float(np.count_nonzero(ref.infection & ref.lungs))
                    / max(1, int(ref.lungs.sum())),
                    2,
                )
            _score_row(row, "infection", result.infection, ref.infection)
            # How much of the reference infection the predicted lungs hold: the share
            # that "percent of lung affected" can count at all.
            row["reference_infection_in_predicted_lungs"] = round(
                float(np.count_nonzero(ref.infection & result.lungs))
                / max(1, int(np.count_nonzero(ref.infection))),
                4,
            )
            if ref.ggo is not None and ref.consolidation is not None:
                _score_row(row, "ggo", result.ggo, ref.ggo)
                _score_row(row, "consolidation", result.consolidation, ref.consolidation)
            rows.append(row)
            results.append(result)
    return rows, results, latencies


def non_chest_lung_fractions(segmenter: CTSegmenter) -> list[dict[str, Any]]:
    """Predicted lung share and lungs_found on real non-chest images shipped with
    installed packages (photos, an MRI slice, pydicom's CT/MR/NM test files)."""
    from ml.serving.ood import packaged_non_chest_images

    out = []
    for name, image in packaged_non_chest_images():
        gray = np.asarray(image.convert("L"))
        if min(gray.shape) < 16:
            continue
        result = segmenter.segment(gray)
        out.append(
            {
                "image": name,
                "predicted_lung_fraction": round(result.lung_area / gray.size, 4),
                "lungs_found": result.lungs_found,
            }
        )
    return out


def _overlay(gray: np.ndarray, lungs: Any, ggo: Any, consolidation: Any, infection: Any) -> Any:
    """RGB float image: slice in gray, lung outline blue, ground-glass yellow,
    consolidation red, infection without a type orange."""
    from ml.ct.preprocess import normalise_intensity
    from ml.ct.segmenter import outline

    base = normalise_intensity(gray)
    rgb = np.repeat(base[..., None], 3, axis=-1)

    def paint(mask: np.ndarray | None, colour: tuple[float, float, float], alpha: float) -> None:
        if mask is None:
            return
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour)

    if ggo is None and consolidation is None:
        paint(infection, (1.0, 0.55, 0.0), 0.55)
    paint(ggo, (1.0, 0.9, 0.1), 0.5)
    paint(consolidation, (0.95, 0.1, 0.1), 0.55)
    if lungs is not None:
        rgb[outline(lungs, 1)] = (0.2, 0.5, 1.0)
    return np.clip(rgb, 0, 1)


def contact_sheet(
    samples: Sequence[CTSample],
    results: Sequence[CTResult],
    rows: Sequence[dict[str, Any]],
    path: Path,
    title: str,
    n: int,
) -> None:
    """Reference (top) vs prediction (bottom) for ``n`` slices spread over the split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = np.unique(np.linspace(0, len(samples) - 1, min(n, len(samples))).round().astype(int))
    fig, axes = plt.subplots(2, len(picks), figsize=(2.1 * len(picks), 4.9), squeeze=False)
    for column, i in enumerate(picks):
        sample, result, row = samples[i], results[i], rows[i]
        gray = read_gray(sample.image)
        ref = references(sample)
        reference = _overlay(gray, ref.lungs, ref.ggo, ref.consolidation, ref.infection)
        lungs = result.lungs if ref.lungs is not None or result.lungs_found else None
        if ref.ggo is None:
            predicted = _overlay(gray, lungs, None, None, result.infection)
        else:
            predicted = _overlay(gray, lungs, result.ggo, result.consolidation, result.infection)
        axes[0, column].imshow(reference)
        axes[0, column].set_title(sample.key.split("/")[-1], fontsize=7)
        axes[1, column].imshow(predicted)
        axes[1, column].set_xlabel(f"infection Dice {row['infection_dice']:.2f}", fontsize=7)
        for ax in axes[:, column]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("reference", fontsize=8)
    axes[1, 0].set_ylabel("predicted", fontsize=8)
    fig.suptitle(
        f"{title}: lung outline blue, ground-glass yellow, consolidation red, "
        "infection (no type) orange",
        fontsize=8,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=80, format="png")
    plt.close(fig)
    from PIL import Image

    with Image.open(buffer) as image:  # a palette PNG: about a third of the bytes
        image.convert("RGB").quantize(128).save(path, optimize=True)


def held_out_samples(
    card: dict[str, Any], zenodo_dir: Path | None, medseg_dir: Path | None
) -> list[CTSample]:
    """The held-out slices, split as the card's training was (seed and fractions)."""
    from ml.ct.data import medseg_samples, zenodo_samples

    h = card.get("hyperparameters", {})
    seed = int(h.get("seed", 0))
    samples: list[CTSample] = []
    if zenodo_dir is not None:
        samples += zenodo_samples(
            zenodo_dir, seed, float(h.get("test_fraction", 0.2)), float(h.get("val_fraction", 0.15))
        )
    if medseg_dir is not None:
        samples += medseg_samples(medseg_dir, seed, float(h.get("medseg_val_fraction", 0.16)))
    recorded = card.get("data", {}).get("split", {}).get(ZENODO, {}).get("test", {})
    groups = sorted({s.group for s in samples if s.source == ZENODO and s.split == "test"})
    if zenodo_dir is not None and recorded.get("volume_groups") not in (None, groups):
        raise ValueError(
            f"The zenodo test groups {groups} differ from the card's {recorded['volume_groups']}."
        )
    return [s for s in samples if s.split == "test"]


def evaluate_ct(
    artifact: Path,
    zenodo_dir: Path | None,
    medseg_dir: Path | None,
    report_dir: Path,
    *,
    cross_model: Path | None = None,
    config: CTTrainConfig | None = None,
    update_card: bool = False,
) -> dict[str, Any]:
    """Test figures, cross-set figure, lung-area bar, contact sheets; writes
    ``report_dir/report.md`` and ``metrics.json``; with ``update_card`` the figures also
    go into the card beside ``artifact``."""
    from ml.ct.segmenter import CTSegmenter
    from ml.ct.training import CTTrainConfig
    from ml.models.artifacts import read_card, write_card

    config = config or CTTrainConfig()
    b, seed = config.n_bootstrap, config.seed
    segmenter = CTSegmenter.load(artifact)
    card = read_card(artifact)
    samples = held_out_samples(card, zenodo_dir, medseg_dir)
    if not samples:
        raise ValueError("No test slices: give --zenodo and/or --medseg.")
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    all_rows: dict[str, list[dict[str, Any]]] = {}
    sheets: dict[str, str] = {}
    latencies: list[float] = []
    for source, kinds, by_group in (
        (ZENODO, ("lungs", "infection"), True),
        (MEDSEG, ("infection", "ggo", "consolidation"), False),
    ):
        chosen = [s for s in samples if s.source == source]
        if not chosen:
            continue
        rows, results, lat = segment_samples(segmenter, chosen)
        latencies += lat
        all_rows[source] = rows
        metrics[source] = {
            "slices": len(rows),
            **({"volume_groups": sorted({r["group"] for r in rows})} if by_group else {}),
            **{kind: summarise(rows, kind, b, seed, by_group) for kind in kinds},
            "lungs_found_rate": round(float(np.mean([r["lungs_found"] for r in rows])), 3),
            "reference_infection_in_predicted_lungs": {
                "mean": round(
                    float(np.mean([r["reference_infection_in_predicted_lungs"] for r in rows])), 3
                ),
                "ci95_slices": bootstrap_slices(
                    [r["reference_infection_in_predicted_lungs"] for r in rows], b, seed
                ),
            },
            "predicted_lung_fraction": {
                "min": float(min(r["predicted_lung_fraction"] for r in rows)),
                "p05": round(
                    float(np.percentile([r["predicted_lung_fraction"] for r in rows], 5)), 4
                ),
            },
        }
        sheet = report_dir / f"sheet-{source}.png"
        contact_sheet(chosen, results, rows, sheet, f"{source} test", config.sheet_slices)
        sheets[source] = sheet.name
    targets = {}
    if ZENODO in metrics:
        value = metrics[ZENODO]["lungs"]["dice"]["mean"]
        targets["zenodo_lung_dice"] = {
            "target": TARGETS["zenodo_lung_dice"],
            "value": value,
            "met": value >= TARGETS["zenodo_lung_dice"],
        }
    if MEDSEG in metrics:
        value = metrics[MEDSEG]["infection"]["dice"]["mean"]
        targets["medseg_infection_dice"] = {
            "target": TARGETS["medseg_infection_dice"],
            "value": value,
            "met": value >= TARGETS["medseg_infection_dice"],
            "published": PUBLISHED,
        }
    cross: dict[str, Any] | None = None
    if cross_model is not None and medseg_dir is not None:
        other = CTSegmenter.load(cross_model)
        med = held_out_samples(read_card(cross_model), None, medseg_dir)
        rows, _, _ = segment_samples(other, med)
        cross = {
            "model": other.version,
            "trained_on": "zenodo only",
            "medseg_test_infection": summarise(rows, "infection", b, seed, False),
            "training": {
                k: other.card.get("training", {}).get(k)
                for k in ("seconds", "epochs_run", "best_epoch", "load_average_before")
            },
        }
    non_chest = non_chest_lung_fractions(segmenter)
    metrics_all = {
        "model": segmenter.version,
        "per_set": metrics,
        "targets": targets,
        "cross_set": cross,
        "no_lungs_bar": {
            "min_lung_fraction": segmenter.post.min_lung_fraction,
            "min_lung_confidence": segmenter.post.min_lung_confidence,
            "non_chest_images": len(non_chest),
            "non_chest_refused": int(sum(not r["lungs_found"] for r in non_chest)),
            "non_chest_max_fraction": max(
                (r["predicted_lung_fraction"] for r in non_chest), default=None
            ),
            "per_image": non_chest,
        },
        "latency_ms_during_evaluation": {
            "segment_batch_per_slice_p50": round(float(np.median(latencies)), 1),
            "note": "batches of 16, whole serving path, shared machine; see bench/ct.py",
        },
        "intervals": "95 % percentile bootstrap of the mean per slice: over slices "
        f"(scipy.stats.bootstrap, {b} resamples) and, for zenodo, over volume groups; "
        "pooled Dice: all pixels, interval resampling slices",
        "report": {"dir": report_dir.name, "markdown": "report.md", "contact_sheets": sheets},
    }
    card["metrics"] = metrics_all
    if update_card:
        write_card(artifact, card)
    (report_dir / "metrics.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    (report_dir / "per-slice.json").write_text(json.dumps(all_rows, indent=1) + "\n")
    (report_dir / "report.md").write_text(markdown(card))
    return card


def fmt(entry: dict[str, Any] | None, key: str = "ci95_slices") -> str:
    if not entry:
        return "-"
    ci = entry.get(key)
    if not ci:
        return f"{entry['mean']:.3f}"
    return f"{entry['mean']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def _pooled(entry: dict[str, Any]) -> str:
    p = entry["pooled_dice"]
    return f"{p['value']:.3f}" + (f" ({p['ci95'][0]:.3f}-{p['ci95'][1]:.3f})" if p["ci95"] else "")


def markdown(card: dict[str, Any]) -> str:
    m = card["metrics"]
    training = card.get("training", {})
    post = card.get("postprocessing", {})
    lines = [
        f"# CT lesion segmentation: {m['model']}",
        "",
        f"U-Net ({card['parameters']:,} parameters, {card.get('file_bytes', 0) / 1e6:.1f} MB), "
        "three heads (lungs, infection, ground-glass vs consolidation), input "
        f"{card['preprocessing']['size']} px, padded to square, intensity "
        f"'{card['preprocessing']['normalise']}' "
        f"(preprocessing v{card['preprocessing']['version']}). "
        f"Post-processing chosen on validation: infection threshold "
        f"{post.get('infection_threshold')}, restrict to lungs {post.get('restrict_to_lungs')}.",
        "",
    ]
    if training:
        lines += [
            f"Training: {training.get('epochs_run')} epochs (best {training.get('best_epoch')}, "
            f"validation score {training.get('best_val_score')}), {training.get('seconds')} s "
            f"({training.get('seconds', 0) / 60:.1f} min) on {training.get('cpus')} CPU cores; "
            f"load average before {training.get('load_average_before')}, after "
            f"{training.get('load_average_after')}; stopped by: {training.get('stopped')}."
            + (
                f" CPU time {training['cpu_seconds']} s ({training['cpu_seconds'] / 60:.0f} "
                "CPU-minutes): on a shared machine the wall time mostly measures the other work."
                if training.get("cpu_seconds")
                else ""
            ),
            "",
        ]
    split = card.get("data", {}).get("split", {})
    if split:
        lines += ["Split: " + json.dumps(split), ""]
    lines += [
        "Mean per slice (95 % bootstrap interval over slices; zenodo also over volume groups); "
        "pooled = all pixels of the split. Masks at each slice's original size.",
        "",
    ]
    z = m["per_set"].get(ZENODO)
    if z:
        lines += [
            f"## zenodo test volume groups {', '.join(z['volume_groups'])} ({z['slices']} slices)",
            "",
            "| class | Dice (slices) | Dice (volume groups) | IoU (slices) | pooled Dice |",
            "|---|---|---|---|---|",
        ]
        for kind in ("lungs", "infection"):
            e = z[kind]
            lines.append(
                f"| {kind} | {fmt(e['dice'])} | {fmt(e['dice'], 'ci95_groups')} | "
                f"{fmt(e['iou'])} | {_pooled(e)} |"
            )
        lines.append("")
    med = m["per_set"].get(MEDSEG)
    if med:
        lines += [
            f"## MedSeg test split ({med['slices']} slices)",
            "",
            "| class | slices with it | Dice (slices) | IoU (slices) | pooled Dice |",
            "|---|---|---|---|---|",
        ]
        for kind in ("infection", "ggo", "consolidation"):
            e = med[kind]
            lines.append(
                f"| {kind} | {e['slices']} | {fmt(e['dice'])} | {fmt(e['iou'])} | {_pooled(e)} |"
            )
        lines.append("")
    lines += ["## Targets", "", "| target | value | met |", "|---|---|---|"]
    for name, t in m["targets"].items():
        lines.append(
            f"| {name} >= {t['target']} | {t['value']:.3f} | {'yes' if t['met'] else '**no**'} |"
        )
    lines += [
        "",
        f"Published on the MedSeg test split (infection Dice): {PUBLISHED}.",
        "",
    ]
    cross = m.get("cross_set")
    if cross:
        e = cross["medseg_test_infection"]
        lines += [
            "## Cross-set",
            "",
            f"Model trained on zenodo only ({cross['model']}, "
            f"{cross['training'].get('epochs_run')} epochs, best "
            f"{cross['training'].get('best_epoch')}, {cross['training'].get('seconds')} s): "
            f"infection Dice on the MedSeg test split {fmt(e['dice'])}, IoU {fmt(e['iou'])}, "
            f"pooled {_pooled(e)}; the same split as the targets above.",
            "",
        ]
    bar = m["no_lungs_bar"]
    lines += [
        "## 'No lung tissue found'",
        "",
        f"Bar: predicted lungs below {bar['min_lung_fraction']:.1%} of the slice"
        + (
            f", or under {bar['min_lung_confidence']:.0%} of them at probability >= 0.9. "
            if bar.get("min_lung_confidence")
            else ". "
        )
        + f"Non-chest images shipped with installed packages: {bar['non_chest_refused']} of "
        f"{bar['non_chest_images']} refused (largest predicted lung share "
        f"{bar['non_chest_max_fraction']}). Test slices with lungs found: "
        + ", ".join(f"{s} {v['lungs_found_rate']:.0%}" for s, v in m["per_set"].items())
        + ". The bar catches blank and lung-free slices, not other kinds of image (the "
        "modality check at upload does that); how it was set: the card's lung_bar_choice.",
        "",
        "Share of the reference infection inside the predicted lungs (what 'percent of lung "
        "affected' can count): "
        + ", ".join(
            f"{s} {fmt(v['reference_infection_in_predicted_lungs'])}"
            for s, v in m["per_set"].items()
        )
        + ". MedSeg has no lung masks, so its lungs are predicted by a head trained on "
        "zenodo only.",
        "",
        f"Latency during evaluation: {m['latency_ms_during_evaluation']}.",
        "",
        "## Contact sheets",
        "",
    ]
    for source, sheet in m["report"]["contact_sheets"].items():
        lines += [f"### {source}", "", f"![{source}]({sheet})", ""]
    return "\n".join(lines) + "\n"

"""The heatmap study: are the explanations faithful, model-dependent, and on the lungs?

``python -m ml study heatmaps --data DIR... --out DIR`` takes the bundled model's test
split (``ml/bundled/splits.csv``), at most ``per_source`` images per data source
(chosen with a seeded generator, sorted by key first), and for every method in
``ml.explain.METHODS``:

* **faithfulness**: deletion and insertion AUC (:func:`ml.explain.deletion_insertion`,
  32 steps, black baseline) of the map for the model's predicted class, against two
  random references scored the same way: a pixel-wise random map and a smooth one
  (8 x 8 random grid, upsampled; the fair reference for smooth maps);
* **sanity**: the cascading model-randomisation check
  (:func:`ml.explain.randomisation_check`) on ``sanity_images`` images;
* **shortcut check**: the share of heatmap mass outside the approximate lung fields
  (:mod:`ml.lungs.heuristic`) per data source, next to the share of the *area* outside
  the lungs (what a map spread evenly over the image would give) and a random map's.

The lung-field heuristic is measured where a reference exists: Dice against the
lungVAE masks of the covid-chestxray snapshot (model outputs, not expert drawings),
for every covid-chestxray image of the test split that has one, plus a contact sheet.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from ml.data.loaders import Record, load_many

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

    from ml.data.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

RANDOM_REFERENCES = ("random-pixel", "random-smooth")


def select_test_records(
    data: Sequence[Path], splits_csv: Path, per_source: int, seed: int = 0
) -> tuple[list[Record], dict[str, int]]:
    """The test-split records named in ``splits_csv``, at most ``per_source`` per source."""
    with Path(splits_csv).open(newline="") as fh:
        test_keys = {row["key"] for row in csv.DictReader(fh) if row["split"] == "test"}
    dataset = load_many(data)
    by_source: dict[str, list[Record]] = {}
    for record in sorted(dataset.records, key=lambda r: r.key):
        if any(k in test_keys for k in record.keys):
            by_source.setdefault(record.source, []).append(record)
    rng = np.random.default_rng(seed)
    chosen: list[Record] = []
    for source in sorted(by_source):
        records = by_source[source]
        if len(records) > per_source:
            keep = sorted(rng.choice(len(records), size=per_source, replace=False))
            records = [records[i] for i in keep]
        chosen.extend(records)
    return chosen, {s: len(v) for s, v in by_source.items()}


def _reference_mask(record: Record, spec: PreprocessSpec) -> np.ndarray | None:
    """The lungVAE mask of a covid-chestxray image, letterboxed like the image, if any."""
    from ml.data.preprocess import open_image, preprocess

    folder = record.path.parent.parent / "annotations" / "lungVAE-masks"
    path = folder / f"{record.path.stem}_mask.png"
    if not path.is_file():
        return None
    mask: np.ndarray = preprocess(open_image(path), spec)[..., 0] > 0.5
    return mask


def _contour_tile(
    gray: np.ndarray, mask: np.ndarray, ref: np.ndarray | None, label: str
) -> Image.Image:
    import cv2

    u8 = (np.clip(gray, 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([u8] * 3, axis=-1).copy()
    for m, colour in ((ref, (0, 160, 255)), (mask, (255, 200, 0))):
        if m is None:
            continue
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, colour, 1)
    tile = Image.fromarray(rgb)
    ImageDraw.Draw(tile).text((2, 1), label, fill=(255, 255, 255))
    return tile


def _sheet(tiles: Sequence[Image.Image], columns: int) -> Image.Image:
    width, height = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width, rows * height))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * width, (i // columns) * height))
    return sheet


def _save_figure(fig: Figure, path: Path, *, dpi: int) -> None:
    """A matplotlib figure as a palette PNG (a fraction of the RGBA file's size)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    _save_png(Image.open(buffer).convert("RGB"), path)


def _save_png(image: Image.Image, path: Path) -> None:
    image.convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(path, optimize=True)


def run_heatmap_study(
    data: Sequence[Path],
    out_dir: Path,
    *,
    model_path: Path,
    splits_csv: Path,
    per_source: int = 30,
    sanity_images: int = 6,
    methods: Sequence[str] | None = None,
    progress: bool = True,
    seed: int = 0,
) -> Path:
    from tqdm.auto import tqdm

    from ml.data.preprocess import open_image, preprocess
    from ml.explain._common import forward
    from ml.explain.api import METHODS, explain, random_heatmap
    from ml.lungs.heuristic import dice, lung_fields
    from ml.serving.classifier import Classifier

    methods = list(methods or METHODS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classifier = Classifier.load(model_path)
    model, spec, classes = classifier.model, classifier.spec, list(classifier.classes)
    records, available = select_test_records(data, splits_csv, per_source, seed)
    log.info("heatmap study: %d images (%s available in the test split)", len(records), available)

    rows = []
    contact: dict[str, list[Image.Image]] = {}
    examples: dict[str, dict[str, Any]] = {}
    seconds = dict.fromkeys(methods, 0.0)
    start = time.perf_counter()
    for i, record in enumerate(tqdm(records, desc="images", disable=not progress)):
        x = preprocess(open_image(record.path), spec)
        probs = forward(model, x[np.newaxis])[0]
        predicted = int(np.argmax(probs))
        lungs = lung_fields(x)
        reference = _reference_mask(record, spec) if record.source == "covid-chestxray" else None
        row: dict[str, Any] = {
            "key": record.key,
            "source": record.source,
            "label": record.label,
            "predicted": classes[predicted],
            "probability": float(probs[predicted]),
            "lung_method": lungs.method,
            "lung_area_fraction": lungs.area_fraction,
            "area_outside": float(1.0 - lungs.mask.mean()),
            "lung_dice_vs_lungvae": dice(lungs.mask, reference) if reference is not None else None,
            "methods": {},  # filled below
        }
        if reference is not None:
            row["area_outside_lungvae"] = float(1.0 - reference.mean())
        shape = x.shape[:2]
        maps = {
            "random-pixel": random_heatmap(shape, seed=seed + i),
            "random-smooth": random_heatmap(shape, seed=seed + i, cells=8),
        }
        for method in methods:
            heatmap = explain(model, x, method, target_class=predicted, classes=classes)
            seconds[method] += heatmap.seconds
            maps[method] = heatmap.values
        row["methods"] = _map_scores(model, x, predicted, maps, lungs.mask, reference)
        rows.append(row)
        tiles = contact.setdefault(record.source, [])
        if len(tiles) < 8:
            tiles.append(_contour_tile(x[..., 0], lungs.mask, reference, f"{lungs.method[0]}"))
        if record.source not in examples and record.label == classes[predicted]:
            examples[record.source] = {"x": x, "maps": maps, "mask": lungs.mask, "row": row}
    study_seconds = time.perf_counter() - start

    sanity_x = [preprocess(open_image(r.path), spec) for r in _spread(records, sanity_images)]
    sanity = _sanity_checks(model, sanity_x, methods, seed=seed)
    summary = summarise(rows, methods)
    result = {
        "model": str(model_path),
        "splits": str(splits_csv),
        "per_source_limit": per_source,
        "test_split_available": available,
        "seconds": {
            "images_total": round(study_seconds, 1),
            "explain_per_method": {k: round(v, 1) for k, v in seconds.items()},
        },
        "summary": summary,
        "sanity": sanity,
        "images": rows,
    }
    (out_dir / "heatmaps.json").write_text(json.dumps(result, indent=1))
    _save_png(_sheet([t for s in sorted(contact) for t in contact[s]], 8), out_dir / "lungs.png")
    _figures(summary, sanity, examples, methods, out_dir)
    return _report(result, methods, out_dir)


def _map_scores(
    model: keras.Model,
    x: np.ndarray,
    predicted: int,
    maps: dict[str, np.ndarray],
    lungs: np.ndarray,
    reference: np.ndarray | None,
) -> dict[str, dict[str, float]]:
    """Per map: deletion and insertion AUC for ``predicted``, and its mass outside the lungs
    (the heuristic's ``lungs`` mask, and the lungVAE ``reference`` where there is one)."""
    from ml.explain.api import deletion_insertion
    from ml.lungs.heuristic import mass_outside

    scored = {}
    for name, values in maps.items():
        scores = deletion_insertion(model, x, values, predicted)
        entry = {
            "deletion_auc": scores["deletion_auc"],
            "insertion_auc": scores["insertion_auc"],
            "outside_lungs": mass_outside(values, lungs),
        }
        if reference is not None:
            entry["outside_lungvae"] = mass_outside(values, reference)
        scored[name] = entry
    return scored


def _sanity_checks(
    model: keras.Model, images: list[np.ndarray], methods: Sequence[str], *, seed: int
) -> list[dict[str, Any]]:
    """The cascading randomisation check of every method on ``images``, timed."""
    from ml.explain.sanity import randomisation_check

    sanity = []
    for method in methods:
        t0 = time.perf_counter()
        result = randomisation_check(model, images, method, seed=seed, mode="cascading")
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result.pop("params", None)
        sanity.append(result)
        log.info("sanity %s: Spearman %.3f", method, result["spearman_mean"])
    return sanity


def _spread(records: Sequence[Record], n: int) -> list[Record]:
    """``n`` records taken round-robin across sources (deterministic)."""
    by_source: dict[str, list[Record]] = {}
    for r in records:
        by_source.setdefault(r.source, []).append(r)
    chosen: list[Record] = []
    i = 0
    while len(chosen) < n and any(i < len(v) for v in by_source.values()):
        for source in sorted(by_source):
            if i < len(by_source[source]) and len(chosen) < n:
                chosen.append(by_source[source][i])
        i += 1
    return chosen


def _stats(values: Sequence[float | None]) -> dict[str, float | None]:
    array = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(array):
        return {"n": 0, "mean": None, "sd": None, "median": None}
    return {
        "n": len(array),
        "mean": float(array.mean()),
        "sd": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "median": float(np.median(array)),
    }


def summarise(rows: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    names = [*methods, *RANDOM_REFERENCES]
    sources = sorted({r["source"] for r in rows})
    faith: dict[str, dict[str, Any]] = {
        name: {
            metric: _stats([r["methods"][name][metric] for r in rows])
            for metric in ("deletion_auc", "insertion_auc")
        }
        for name in names
    }
    for name in methods:
        # Paired per image against the smooth random map: share of images where the
        # method deletes faster / inserts faster.
        faith[name]["deletion_beats_random_smooth"] = float(
            np.mean(
                [
                    r["methods"][name]["deletion_auc"]
                    < r["methods"]["random-smooth"]["deletion_auc"]
                    for r in rows
                ]
            )
        )
        faith[name]["insertion_beats_random_smooth"] = float(
            np.mean(
                [
                    r["methods"][name]["insertion_auc"]
                    > r["methods"]["random-smooth"]["insertion_auc"]
                    for r in rows
                ]
            )
        )
    outside = {}
    for source in sources:
        sub = [r for r in rows if r["source"] == source]
        outside[source] = {
            "n": len(sub),
            "area_outside": _stats([r["area_outside"] for r in sub]),
            "lung_prior_used": sum(r["lung_method"] == "prior" for r in sub),
            "lung_area_fraction": _stats([r["lung_area_fraction"] for r in sub]),
            "accuracy": float(np.mean([r["label"] == r["predicted"] for r in sub])),
            "methods": {
                name: _stats([r["methods"][name]["outside_lungs"] for r in sub]) for name in names
            },
        }
        with_ref = [r for r in sub if r["lung_dice_vs_lungvae"] is not None]
        if with_ref:
            outside[source]["lungvae"] = {
                "n": len(with_ref),
                "dice": _stats([r["lung_dice_vs_lungvae"] for r in with_ref]),
                "dice_threshold_only": _stats(
                    [r["lung_dice_vs_lungvae"] for r in with_ref if r["lung_method"] != "prior"]
                ),
                "area_outside": _stats([r["area_outside_lungvae"] for r in with_ref]),
                "methods": {
                    name: _stats([r["methods"][name]["outside_lungvae"] for r in with_ref])
                    for name in names
                },
            }
    return {"faithfulness": faith, "outside_lungs": outside}


def _figures(
    summary: dict[str, Any],
    sanity: list[dict[str, Any]],
    examples: dict[str, dict[str, Any]],
    methods: Sequence[str],
    out_dir: Path,
) -> None:
    _faithfulness_figure(summary["faithfulness"], methods, out_dir / "heatmap-faithfulness.png")
    _outside_lungs_figure(summary["outside_lungs"], methods, out_dir / "heatmap-outside-lungs.png")
    _sanity_figure(sanity, out_dir / "heatmap-sanity.png")
    if examples:
        _examples_figure(examples, methods, out_dir / "heatmap-examples.png")


def _faithfulness_figure(faith: dict[str, Any], methods: Sequence[str], path: Path) -> None:
    from matplotlib.figure import Figure

    names = [*methods, *RANDOM_REFERENCES]
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, better in zip(
        axes, ("deletion_auc", "insertion_auc"), ("lower", "higher"), strict=True
    ):
        means = [faith[n][metric]["mean"] for n in names]
        sds = [faith[n][metric]["sd"] for n in names]
        colours = ["#1f77b4"] * len(methods) + ["#999999"] * len(RANDOM_REFERENCES)
        ax.bar(range(len(names)), means, yerr=sds, color=colours, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
        ax.set_title(f"{metric.replace('_', ' ')} ({better} = more faithful)")
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=80)


def _outside_lungs_figure(outside: dict[str, Any], methods: Sequence[str], path: Path) -> None:
    from matplotlib.figure import Figure

    names = [*methods, *RANDOM_REFERENCES]
    sources = sorted(outside)
    fig = Figure(figsize=(8, 3.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(sources)
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    for k, source in enumerate(sources):
        means = [outside[source]["methods"][n]["mean"] for n in names]
        sds = [outside[source]["methods"][n]["sd"] for n in names]
        pos = np.arange(len(names)) + (k - (len(sources) - 1) / 2) * width
        ax.bar(pos, means, width, yerr=sds, capsize=2, label=source, color=palette[k % 4])
        ax.axhline(outside[source]["area_outside"]["mean"], color=palette[k % 4], ls=":", lw=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("share of heatmap mass outside lungs")
    ax.set_ylim(0, 1)
    ax.set_title("Heatmap mass outside the approximate lung fields (dotted: area outside)")
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=80)


def _sanity_figure(sanity: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = fig.subplots()
    for result in sanity:
        stages = result["stages"]
        ax.plot(
            range(1, len(stages) + 1),
            [s["spearman_mean"] for s in stages],
            marker="o",
            label=result["method"],
        )
    if sanity:
        ax.set_xticks(
            range(1, len(sanity[0]["stages"]) + 1),
            [s["top_layer_randomised_down_to"] for s in sanity[0]["stages"]],
            rotation=40,
            ha="right",
        )
    ax.set_ylabel("Spearman, trained vs randomised")
    ax.set_xlabel("randomised from the output down to")
    ax.axhline(0, color="#555555", lw=0.8)
    ax.legend(fontsize=7)
    ax.set_title("Cascading randomisation (lower = map depends on weights)")
    fig.savefig(path, dpi=80)


def _examples_figure(
    examples: dict[str, dict[str, Any]], methods: Sequence[str], path: Path
) -> None:
    from matplotlib.figure import Figure

    from ml.serving.colours import HEATMAP_CMAP

    sources = sorted(examples)
    fig = Figure(figsize=(1.6 * (len(methods) + 1), 1.8 * len(sources)), layout="constrained")
    grid = fig.subplots(len(sources), len(methods) + 1, squeeze=False)
    for r, source in enumerate(sources):
        ex = examples[source]
        grid[r][0].imshow(ex["x"][..., 0], cmap="gray", vmin=0, vmax=1)
        grid[r][0].contour(ex["mask"], levels=[0.5], colors="yellow", linewidths=0.6)
        grid[r][0].set_title(f"{source}\n{ex['row']['label']}", fontsize=7)
        for c, method in enumerate(methods, 1):
            grid[r][c].imshow(ex["x"][..., 0], cmap="gray", vmin=0, vmax=1)
            grid[r][c].imshow(ex["maps"][method], cmap=HEATMAP_CMAP, alpha=0.5, vmin=0, vmax=1)
            grid[r][c].contour(ex["mask"], levels=[0.5], colors="white", linewidths=0.5)
            share = ex["row"]["methods"][method]["outside_lungs"]
            grid[r][c].set_title(f"{method}: {share:.0%} out", fontsize=7)
    for ax in grid.ravel():
        ax.set_axis_off()
    _save_figure(fig, path, dpi=80)


def _f(stats: dict[str, Any]) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean']:.3f} ± {stats['sd']:.3f}"


def _report(result: dict[str, Any], methods: Sequence[str], out_dir: Path) -> Path:
    summary = result["summary"]
    names = [*methods, *RANDOM_REFERENCES]
    lines = [
        "# Heatmap study",
        "",
        f"Model `{result['model']}`, test split `{result['splits']}`; at most "
        f"{result['per_source_limit']} images per source (available: "
        + ", ".join(f"{k} {v}" for k, v in result["test_split_available"].items())
        + "). Each map explains the model's predicted class. Mean ± sd over images.",
        "",
        "## Faithfulness (deletion / insertion, 32 steps, black baseline)",
        "",
        "| map | deletion AUC (lower better) | insertion AUC (higher better) | "
        "deletion < smooth random | insertion > smooth random |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        f = summary["faithfulness"][name]
        beats = (
            f"{f['deletion_beats_random_smooth']:.0%} | {f['insertion_beats_random_smooth']:.0%}"
            if name in methods
            else "- | -"
        )
        lines.append(f"| {name} | {_f(f['deletion_auc'])} | {_f(f['insertion_auc'])} | {beats} |")
    lines += [
        "",
        "![faithfulness](heatmap-faithfulness.png)",
        "",
        "## Model-randomisation sanity check (cascading)",
        "",
        "| method | images | Spearman, fully random | SSIM, fully random | "
        "Spearman after output layer only | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for s in result["sanity"]:
        lines.append(
            f"| {s['method']} | {s['n_images']} | {s['spearman_mean']:.3f} | "
            f"{s['ssim_mean']:.3f} | {s['stages'][0]['spearman_mean']:.3f} | {s['seconds']} |"
        )
    lines += [
        "",
        "![sanity](heatmap-sanity.png)",
        "",
        "## Heatmap mass outside the lung fields, per source",
        "",
        "Approximate lung fields (`ml/lungs/heuristic.py`). *area outside* is the share of the "
        "image outside the lung mask: a map spread evenly would put that much mass outside.",
        "",
        "| source | n | accuracy | lung prior used | area outside | " + " | ".join(names) + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for source, o in summary["outside_lungs"].items():
        cells = " | ".join(_f(o["methods"][n]) for n in names)
        lines.append(
            f"| {source} | {o['n']} | {o['accuracy']:.2f} | {o['lung_prior_used']} | "
            f"{_f(o['area_outside'])} | {cells} |"
        )
    for source, o in summary["outside_lungs"].items():
        if "lungvae" not in o:
            continue
        v = o["lungvae"]
        lines += [
            "",
            f"Cross-check on {source} with the lungVAE masks ({v['n']} images with a mask): "
            f"Dice of the heuristic vs lungVAE {_f(v['dice'])} (threshold path only: "
            f"{_f(v['dice_threshold_only'])}); area outside {_f(v['area_outside'])}; mass "
            "outside: " + ", ".join(f"{n} {_f(v['methods'][n])}" for n in names) + ".",
        ]
    lines += [
        "",
        "![outside lungs](heatmap-outside-lungs.png)",
        "",
        "![examples](heatmap-examples.png)",
        "",
        "Lung fields on the first 8 images per source (yellow: heuristic; blue: lungVAE "
        "where available; tile letter t = threshold path, p = prior fallback):",
        "",
        "![lung fields](lungs.png)",
        "",
        f"Time: {result['seconds']['images_total']} s for the per-image part; explanation "
        "seconds per method: "
        + ", ".join(f"{k} {v}" for k, v in result["seconds"]["explain_per_method"].items())
        + ".",
    ]
    path = out_dir / "heatmap-study.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def lung_quality(covid_dir: Path, out_dir: Path, *, size: int = 128) -> dict[str, Any]:
    """Dice of the lung heuristic against every lungVAE mask of the covid-chestxray set.

    The lungVAE masks are model outputs (arXiv:2005.10052), not expert drawings: this
    measures agreement with another method, an upper bound on what can be checked here.
    Also reports the prior fallback alone, as the floor a fixed anatomical guess reaches.
    """
    from ml.data.preprocess import PreprocessSpec, open_image, preprocess
    from ml.lungs.heuristic import dice, lung_fields, prior_mask

    spec = PreprocessSpec(input_size=size)
    covid_dir = Path(covid_dir)
    rows: list[dict[str, Any]] = []
    tiles: list[Image.Image] = []
    for mask_path in sorted((covid_dir / "annotations" / "lungVAE-masks").glob("*_mask.png")):
        stem = mask_path.name.removesuffix("_mask.png")
        images = sorted((covid_dir / "images").glob(f"{stem}.*"))
        if not images:
            continue
        x = preprocess(open_image(images[0]), spec)[..., 0]
        reference = preprocess(open_image(mask_path), spec)[..., 0] > 0.5
        lungs = lung_fields(x)
        rows.append(
            {
                "image": images[0].name,
                "method": lungs.method,
                "dice": dice(lungs.mask, reference),
                "dice_prior_only": dice(prior_mask(x.shape, lungs.content_box), reference),
                "area_fraction": lungs.area_fraction,
            }
        )
        if len(tiles) < 24:
            tiles.append(_contour_tile(x, lungs.mask, reference, lungs.method[0]))
    result = {
        "n": len(rows),
        "dice": _stats([r["dice"] for r in rows]),
        "dice_threshold_path": _stats([r["dice"] for r in rows if r["method"] == "threshold"]),
        "dice_prior_only": _stats([r["dice_prior_only"] for r in rows]),
        "prior_used": sum(r["method"] == "prior" for r in rows),
        "dice_below_0_5": sum(r["dice"] < 0.5 for r in rows),
        "images": rows,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lung-quality.json").write_text(json.dumps(result, indent=1))
    if tiles:
        _save_png(_sheet(tiles, 8), out_dir / "lung-quality.png")
    return result

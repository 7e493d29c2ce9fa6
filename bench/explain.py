"""Explanation benchmark: speed, faithfulness and the randomisation check per method.

    .venv/bin/python -m bench.explain
    CXR_SHARED_DATASETS=../shared/datasets .venv/bin/python -m bench.explain   # test split

Uses ``ml/bundled/cxr-compact.keras`` when present, else the tiny fixture model. Images:
up to 60 test-split images of the bundled model's ``splits.csv`` when
``CXR_SHARED_DATASETS`` points at the shared datasets, else the 18 fixture images.
Prints a table and writes ``bench/results-explain.json``. Timings are warm (compiled
functions already traced) and for this machine only.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import summary
from ml.data.preprocess import open_image, preprocess
from ml.explain._common import normalise_map
from ml.explain.api import (
    METHODS,
    deletion_insertion,
    explain,
    fast_occlusion,
    random_heatmap,
    randomisation_check,
    tf_explain_occlusion,
)
from ml.explain.occlusion import default_fill_value, default_patch_size, occlusion_path
from ml.models.artifacts import read_card
from ml.serving.classifier import Classifier

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "ml" / "bundled" / "cxr-compact.keras"
TINY = ROOT / "tests" / "fixtures" / "models" / "cxr-tiny.keras"
FIXTURE_IMAGES = ROOT / "tests" / "fixtures" / "images"
MAX_SHARED_IMAGES = 60
OCCLUSION_IMAGES = 5
OCCLUSION_REPEATS = 3
SANITY_IMAGES = 8


def _percentiles(samples: list[float]) -> dict[str, float]:
    return summary(samples, "s", digits=4)


def _shared_image_path(datasets: Path, key: str) -> Path | None:
    source, _, filename = key.partition("/")
    if source == "pediatric-pneumonia":
        candidates = [
            datasets / source / part / label / filename
            for part in ("test", "train")
            for label in ("NORMAL", "PNEUMONIA")
        ]
    else:  # covid-chestxray and adult-normal keep their files in images/
        candidates = [datasets / source / "images" / filename]
    return next((path for path in candidates if path.is_file()), None)


def _shared_test_images(limit: int) -> tuple[list[Path], str] | None:
    value = os.environ.get("CXR_SHARED_DATASETS")
    splits = ROOT / "ml" / "bundled" / "splits.csv"
    if not value or not Path(value).is_dir() or not splits.is_file():
        return None
    with splits.open(newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row["split"] == "test"]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["key"]):
        groups[(row["source"], row["label"])].append(row)
    rng = np.random.default_rng(0)
    for group in groups.values():
        rng.shuffle(group)
    chosen: list[Path] = []
    while len(chosen) < limit and any(groups.values()):  # round-robin over source x label
        for key in sorted(groups):
            if groups[key] and len(chosen) < limit:
                path = _shared_image_path(Path(value), groups[key].pop()["key"])
                if path is not None:
                    chosen.append(path)
    return chosen, f"test split of {splits.relative_to(ROOT)} ({len(chosen)} images)"


def _images() -> tuple[list[Path], str]:
    shared = _shared_test_images(MAX_SHARED_IMAGES)
    if shared is not None and shared[0]:
        return shared
    paths = sorted(
        p for p in FIXTURE_IMAGES.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    )
    return paths, f"fixture images ({len(paths)})"


def _occlusion_comparison(
    model, images: list[np.ndarray], classes: list[int], *, default_only: bool = False
) -> dict:
    """Fast path vs tf-explain's ``get_sensitivity_map``: time and agreement.

    The fast path is the one ``explain`` takes (``occlusion_path``: incremental or full
    batch); the full batch is timed too. Each image is timed ``OCCLUSION_REPEATS`` times,
    the three calls interleaved so that load from other processes hits all of them.
    """
    size = images[0].shape[:2]
    rows = []
    sizes = {default_patch_size(size)}
    if not default_only:
        sizes |= {max(1, min(size) // 16), min(size) // 4}
    for patch in sorted(sizes):
        fast_times, full_times, reference_times, differences = [], [], [], []
        for x, target in zip(images, classes, strict=True):
            fill = default_fill_value(x)
            fast_occlusion(model, x, target, patch, fill)  # warm: trace for this batch size
            fast_occlusion(model, x, target, patch, fill, path="full")
            tf_explain_occlusion(model, x, target, patch, fill)  # warm: predict function
            for _ in range(OCCLUSION_REPEATS):
                start = time.perf_counter()
                fast = fast_occlusion(model, x, target, patch, fill)
                fast_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                fast_occlusion(model, x, target, patch, fill, path="full")
                full_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                reference = tf_explain_occlusion(model, x, target, patch, fill)
                reference_times.append(time.perf_counter() - start)
            differences.append(float(np.abs(normalise_map(fast) - normalise_map(reference)).max()))
        fast_p50 = statistics.median(fast_times)
        full_p50 = statistics.median(full_times)
        reference_p50 = statistics.median(reference_times)
        rows.append(
            {
                "patch_size": patch,
                "patches": int(np.ceil(size[0] / patch) * np.ceil(size[1] / patch)),
                "default": patch == default_patch_size(size),
                "path": occlusion_path(model, patch, images[0].shape),
                "fast_p50_s": round(fast_p50, 4),
                "full_batch_p50_s": round(full_p50, 4),
                "tf_explain_p50_s": round(reference_p50, 4),
                "speedup": round(reference_p50 / fast_p50, 2),
                "full_batch_speedup": round(reference_p50 / full_p50, 2),
                "max_abs_diff_normalised": max(differences),
                "n_images": len(images),
                "timings_per_image": OCCLUSION_REPEATS,
            }
        )
    return {"fill": "image mean", "by_patch_size": rows}


def speed(max_images: int = 6, occlusion_images: int = 3) -> dict:
    """The quick part for ``python -m bench``: warm seconds per method, and fast
    occlusion vs tf-explain's at the default patch size (same run, same images).
    The faithfulness scores and randomisation checks stay in ``main``."""
    model_path = BUNDLED if BUNDLED.is_file() else TINY
    classifier = Classifier.load(model_path)
    model = classifier.model
    paths = sorted(
        p for p in FIXTURE_IMAGES.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    )[:max_images]
    images = [preprocess(open_image(path), classifier.spec) for path in paths]
    targets = [int(np.argmax(p)) for p in classifier.predict_array(np.stack(images))]
    per_method = {}
    for method in METHODS:
        explain(model, images[0], method, target_class=targets[0])  # warm-up: tracing
        seconds = [
            explain(model, x, method, target_class=t).seconds
            for x, t in zip(images, targets, strict=True)
        ]
        per_method[method] = _percentiles(seconds)
    occlusion = _occlusion_comparison(
        model, images[:occlusion_images], targets[:occlusion_images], default_only=True
    )
    return {
        "model": read_card(model_path).get("name", model_path.stem),
        "images": f"fixture images ({len(images)})",
        "seconds_per_image": per_method,
        "occlusion_fast_vs_tf_explain": occlusion["by_patch_size"][0],
    }


def main() -> None:
    started = time.perf_counter()
    model_path = BUNDLED if BUNDLED.is_file() else TINY
    card = read_card(model_path)
    classifier = Classifier.load(model_path)
    model = classifier.model
    paths, image_source = _images()
    images = [preprocess(open_image(path), classifier.spec) for path in paths]
    probabilities = classifier.predict_array(np.stack(images))
    targets = [int(np.argmax(p)) for p in probabilities]
    print(f"model {card.get('name', model_path.stem)}; {image_source}")

    # Chance-level references, scored the same way: random per pixel, and random over a
    # grid as coarse as the compact CNN's last conv layer (regions go at once, as with
    # Grad-CAM or occlusion).
    cells = max(1, min(images[0].shape[:2]) // 8)
    random_scores = {
        name: [
            deletion_insertion(model, x, random_heatmap(x.shape[:2], seed=i, cells=grid), t)
            for i, (x, t) in enumerate(zip(images, targets, strict=True))
        ]
        for name, grid in (("pixels", None), (f"{cells}x{cells} cells", cells))
    }
    per_method: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        explain(model, images[0], method, target_class=targets[0])  # warm-up: tracing
        seconds, deletion, insertion = [], [], []
        for x, target in zip(images, targets, strict=True):
            heatmap = explain(model, x, method, target_class=target)
            seconds.append(heatmap.seconds)
            scores = deletion_insertion(model, x, heatmap.values, target)
            deletion.append(scores["deletion_auc"])
            insertion.append(scores["insertion_auc"])
        per_method[method] = {
            "seconds_per_image": _percentiles(seconds),
            "deletion_auc_mean": round(float(np.mean(deletion)), 4),
            "insertion_auc_mean": round(float(np.mean(insertion)), 4),
            "params": heatmap.params,
        }
        print(f"  {method}: done ({time.perf_counter() - started:.0f} s)")
    random_baseline = {
        name: {
            f"{key}_mean": round(float(np.mean([r[key] for r in scores])), 4)
            for key in ("deletion_auc", "insertion_auc")
        }
        for name, scores in random_scores.items()
    }

    occlusion = _occlusion_comparison(model, images[:OCCLUSION_IMAGES], targets[:OCCLUSION_IMAGES])
    print(f"  occlusion comparison: done ({time.perf_counter() - started:.0f} s)")

    sanity_images = images[:SANITY_IMAGES]
    sanity = {
        method: randomisation_check(model, sanity_images, method, mode="full") for method in METHODS
    }
    cascading = randomisation_check(model, sanity_images, "gradcam", mode="cascading")
    print(f"  randomisation check: done ({time.perf_counter() - started:.0f} s)")

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "model": {"name": card.get("name", model_path.stem), "sha256": card.get("sha256")},
        "images": {"source": image_source, "n": len(images)},
        "methods": per_method,
        "random_heatmap_baselines": random_baseline,
        "targets": {name: targets.count(i) for i, name in enumerate(classifier.classes)},
        "occlusion_fast_vs_tf_explain": occlusion,
        "randomisation_check": {
            "mode": "full (all weights re-initialised)",
            "n_images": len(sanity_images),
            "per_method": {
                method: {
                    "spearman_mean": round(result["spearman_mean"], 4),
                    "ssim_mean": round(result["ssim_mean"], 4),
                }
                for method, result in sanity.items()
            },
            "gradcam_cascading": [
                {
                    "randomised_down_to": stage["top_layer_randomised_down_to"],
                    "spearman_mean": round(stage["spearman_mean"], 4),
                    "ssim_mean": round(stage["ssim_mean"], 4),
                }
                for stage in cascading["stages"]
            ],
        },
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    out = ROOT / "bench" / "results-explain.json"
    out.write_text(json.dumps(results, indent=2) + "\n")

    print()
    header = f"{'method':<12}{'p50 s':>9}{'p95 s':>9}{'deletion':>10}{'insertion':>11}"
    print(header + f"{'rand. Spearman':>16}{'rand. SSIM':>12}")
    for method in METHODS:
        row = per_method[method]
        check = results["randomisation_check"]["per_method"][method]
        print(
            f"{method:<12}{row['seconds_per_image']['p50_s']:>9.4f}"
            f"{row['seconds_per_image']['p95_s']:>9.4f}{row['deletion_auc_mean']:>10.3f}"
            f"{row['insertion_auc_mean']:>11.3f}{check['spearman_mean']:>16.3f}"
            f"{check['ssim_mean']:>12.3f}"
        )
    for name, row in random_baseline.items():
        print(
            f"{'random, ' + name:<30}{row['deletion_auc_mean']:>10.3f}"
            f"{row['insertion_auc_mean']:>11.3f}"
        )
    print("(deletion: lower is better; insertion: higher; randomisation similarity: lower)")
    print()
    print(
        f"{'occlusion patch':<17}{'patches':>8}{'path':>13}{'fast s':>9}{'full s':>9}"
        f"{'tf-explain s':>14}{'speed-up':>10}"
    )
    for row in occlusion["by_patch_size"]:
        mark = " (default)" if row["default"] else ""
        print(
            f"{row['patch_size']:<17}{row['patches']:>8}{row['path']:>13}"
            f"{row['fast_p50_s']:>9.4f}{row['full_batch_p50_s']:>9.4f}"
            f"{row['tf_explain_p50_s']:>14.4f}{row['speedup']:>9.1f}x  "
            f"max diff {row['max_abs_diff_normalised']:.1e}{mark}"
        )
    print(f"wrote {out.relative_to(ROOT)} in {results['total_seconds']} s")


if __name__ == "__main__":
    main()

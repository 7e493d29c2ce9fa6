"""Warm lung segmentation latency of the bundled U-Net (target: <= 10 ms at its input size).

    .venv/bin/python -m bench.lungs      # also part of `python -m bench`

Three measures on one fixture film: the model alone (``LungSegmenter.probability``, a
``tf.function`` direct call on one letterboxed input), the whole ``segment_gray`` on an
image already at the input size (letterbox, model, post-processing, plausibility), and
``segment_gray`` on the film at 1024 x 1024 pixels (adds letterboxing a large image and
resizing the mask back to its resolution). Prints the load average beside the figures:
on a shared machine they hold for the moment they were taken.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.stats import summary

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "tests" / "fixtures" / "images" / "2168a917.jpg"
TARGET_MS = 10.0


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    for _ in range(5):
        fn()  # warm-up: tracing, oneDNN kernel selection
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def measure(repeats: int = 200) -> dict[str, Any]:
    """Warm latencies (ms) of the bundled lung model; ``repeats`` timed calls per measure."""
    from ml.data.preprocess import open_image, to_unit_gray
    from ml.lungs.masks import letterbox
    from ml.lungs.segmenter import LungSegmenter

    load_before = [round(x, 2) for x in os.getloadavg()]
    segmenter = LungSegmenter.load()
    gray = to_unit_gray(open_image(IMAGE))
    # The fixture is stored small; NIH and most covid-chestxray films are 1024 px or more.
    film = to_unit_gray(open_image(IMAGE).resize((1024, 1024), Image.Resampling.BILINEAR))
    at_input, _ = letterbox(gray, segmenter.size)
    batch = at_input[np.newaxis]
    results: dict[str, Any] = {
        "model": {"version": segmenter.version, "input_size": segmenter.size},
        "image": IMAGE.name,
        "film_pixels": f"{film.shape[1]}x{film.shape[0]}",
        "model_call": summary(_time(lambda: segmenter.probability(batch), repeats), "ms"),
        "segment_at_input_size": summary(
            _time(lambda: segmenter.segment_gray(at_input), repeats), "ms"
        ),
        "segment_original_resolution": summary(
            _time(lambda: segmenter.segment_gray(film), max(10, repeats // 2)), "ms"
        ),
        "target_ms": TARGET_MS,
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    results["target_met"] = results["segment_at_input_size"]["p50_ms"] <= TARGET_MS
    return results


def main() -> None:
    results = measure()
    out = ROOT / "bench" / "results-lungs.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['model']['version']} on {results['image']}, {results['cpus']} CPUs")
    print(f"{'measure':<44}{'p50 ms':>10}{'p95 ms':>10}")
    for key, label in (
        ("model_call", "model alone (direct call)"),
        ("segment_at_input_size", f"segment_gray at {results['model']['input_size']} px"),
        ("segment_original_resolution", f"segment_gray, {results['film_pixels']} film"),
    ):
        row = results[key]
        print(f"{label:<44}{row['p50_ms']:>10.2f}{row['p95_ms']:>10.2f}")
    print(f"target p50 <= {TARGET_MS} ms at the input size: {results['target_met']}")
    print(
        f"load average before {results['load_average_before']}, "
        f"after {results['load_average_after']}"
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Warm CT segmentation latency of the bundled CT U-Net (target: <= 30 ms p50 per slice).

    .venv/bin/python -m bench.ct      # also part of `python -m bench`

Measures on a fixture slice (taken in turn, call by call, so that they share the
machine's moments of load): the model alone (``CTSegmenter.heads``: one direct call of
the ``tf.function`` on one prepared 256 x 256 input), the whole ``CTSegmenter.segment``
on a 256 x 256 slice (preprocessing, model, post-processing, masks and figures at the
original size), ``segment`` on a non-square MedSeg slice, and ``infection_gradcam``.
Prints the load average beside the figures: on a shared machine they hold for the
moment they were taken.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stats import summary

ROOT = Path(__file__).resolve().parent.parent
SLICE = ROOT / "tests" / "fixtures" / "ct" / "zenodo" / "images" / "0313.jpg"
NON_SQUARE = ROOT / "tests" / "fixtures" / "ct" / "medseg" / "images" / "slice-003.jpg"
TARGET_MS = 30.0


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    for _ in range(5):
        fn()  # warm-up: tracing, oneDNN kernel selection
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _time_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Like :func:`_time`, but one call of each function in turn, so that every measure
    sees the same moments of a shared machine's load."""
    for fn in fns.values():
        for _ in range(5):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000)
    return samples


def measure(repeats: int = 200, model: Path | None = None) -> dict[str, Any]:
    """Warm latencies (ms) of the bundled CT model; ``repeats`` timed calls per measure."""
    import numpy as np

    from ml.ct.data import read_gray
    from ml.ct.preprocess import prepare_slice
    from ml.ct.segmenter import BUNDLED_CT_MODEL, CTSegmenter

    load_before = [round(x, 2) for x in os.getloadavg()]
    segmenter = CTSegmenter.load(model or BUNDLED_CT_MODEL)
    gray = read_gray(SLICE)
    other = read_gray(NON_SQUARE)
    x, _ = prepare_slice(gray, segmenter.spec)
    batch = x[np.newaxis]
    results: dict[str, Any] = {
        "model": {
            "version": segmenter.version,
            "input_size": segmenter.size,
            "parameters": int(segmenter.model.count_params()),
        },
        "slice": f"{SLICE.name} ({gray.shape[1]}x{gray.shape[0]})",
        "non_square_slice": f"{NON_SQUARE.name} ({other.shape[1]}x{other.shape[0]})",
        **{
            name: summary(values, "ms")
            for name, values in _time_interleaved(
                {
                    "model_call": lambda: segmenter.heads(batch),
                    "segment": lambda: segmenter.segment(gray),
                    "segment_non_square": lambda: segmenter.segment(other),
                },
                repeats,
            ).items()
        },
        "gradcam": summary(
            _time(lambda: segmenter.infection_gradcam(gray), max(10, repeats // 10)), "ms"
        ),
        "target_ms": TARGET_MS,
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    results["target_met"] = results["segment"]["p50_ms"] <= TARGET_MS
    return results


def main() -> None:
    results = measure()
    out = ROOT / "bench" / "results-ct.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['model']['version']} on {results['slice']}, {results['cpus']} CPUs")
    print(f"{'measure':<44}{'p50 ms':>10}{'p95 ms':>10}")
    for key, label in (
        ("model_call", "model alone (direct call)"),
        ("segment", f"segment, {results['slice']}"),
        ("segment_non_square", f"segment, {results['non_square_slice']}"),
        ("gradcam", "infection_gradcam"),
    ):
        row = results[key]
        print(f"{label:<44}{row['p50_ms']:>10.2f}{row['p95_ms']:>10.2f}")
    print(f"target segment p50 <= {TARGET_MS} ms: {results['target_met']}")
    print(
        f"load average before {results['load_average_before']}, "
        f"after {results['load_average_after']}"
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

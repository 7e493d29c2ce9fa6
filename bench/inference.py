"""Warm single-image inference latency of the default model: direct call vs ``model.predict``.

    make bench        # or: .venv/bin/python -m bench.inference

Prints a table and writes ``bench/results-inference.json``. Figures are for
this machine only; the full benchmark suite (API, workers, memory) comes with
the reliability issue.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from bench.stats import summary
from ml.data.preprocess import open_image, preprocess
from ml.models.artifacts import read_card
from ml.serving.classifier import Classifier

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "ml" / "bundled" / "cxr-compact.keras"
IMAGE = ROOT / "tests" / "fixtures" / "images" / "2168a917.jpg"


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    return summary(samples_ms, "ms")


def _time(fn, repeats: int) -> list[float]:
    for _ in range(5):
        fn()  # warm-up: tracing, oneDNN kernel selection
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def measure(repeats: int = 200) -> dict:
    """Warm latencies of the bundled model; ``repeats`` timed calls per measure."""
    card = read_card(MODEL)
    classifier = Classifier.load(MODEL, expected_sha256=card["sha256"])
    image = open_image(IMAGE)
    batch = preprocess(image, classifier.spec)[np.newaxis]
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "model": {"name": card["name"], "sha256": card["sha256"]},
        "end_to_end_predict": _percentiles(_time(lambda: classifier.predict(image), repeats)),
        "direct_call": _percentiles(_time(lambda: classifier.predict_array(batch), repeats)),
        "keras_model_predict": _percentiles(
            _time(lambda: classifier.model.predict(batch, verbose=0), max(10, repeats // 4))
        ),
    }
    results["predict_over_direct_ratio"] = round(
        results["keras_model_predict"]["p50_ms"] / results["direct_call"]["p50_ms"], 1
    )
    return results


def main() -> None:
    results = measure()
    out = ROOT / "bench" / "results-inference.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'measure':<42}{'p50 ms':>10}{'p95 ms':>10}")
    for key, label in (
        ("end_to_end_predict", "Classifier.predict (preprocess + call)"),
        ("direct_call", "tf.function direct call"),
        ("keras_model_predict", "keras model.predict"),
    ):
        row = results[key]
        print(f"{label:<42}{row['p50_ms']:>10.2f}{row['p95_ms']:>10.2f}")
    print(f"model.predict / direct call (p50): {results['predict_over_direct_ratio']}x")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

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
# The default model since issue 16: preprocessing v2, so a prediction segments the lungs,
# crops to them and classifies (target: <= 25 ms p50 warm on 2 cores).
LUNG_MODEL = ROOT / "ml" / "bundled" / "cxr-lungs" / "cxr-lungs.keras"
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


def _lung_model(image, repeats: int) -> dict:
    """Warm classification of one film by the v2 model, segmentation and crop included."""
    card = read_card(LUNG_MODEL)
    classifier = Classifier.load(LUNG_MODEL, expected_sha256=card["sha256"])
    parts: dict[str, list[float]] = {"segment": [], "preprocess": [], "classify": []}

    def once() -> None:
        prediction = classifier.predict(image)
        parts["segment"].append(prediction.segment_ms)
        parts["preprocess"].append(prediction.preprocess_ms)
        parts["classify"].append(prediction.inference_ms)

    total = _time(once, repeats)
    return {
        "name": card["name"],
        "sha256": card["sha256"],
        "image_px": list(image.size),
        "end_to_end_predict": _percentiles(total),
        **{f"{name}_ms": _percentiles(v[-repeats:]) for name, v in parts.items()},
        "target_p50_ms": 25.0,
    }


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
    if LUNG_MODEL.is_file():
        results["lung_model"] = _lung_model(image, repeats)
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

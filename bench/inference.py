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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.stats import summary
from ml.data.preprocess import open_image, preprocess
from ml.models.artifacts import read_card
from ml.serving.classifier import Classifier

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "ml" / "bundled" / "cxr-compact.keras"
# The default model (EfficientNet-Lite0 on lung crops, 224 px): preprocessing
# v2, so a prediction segments the lungs, crops to them and classifies (target: <= 30 ms
# p50 warm on 2 cores, on LiteRT).
LUNG_MODEL = ROOT / "ml" / "bundled" / "cxr-lite0" / "cxr-lite0.keras"
TARGET_P50_MS = 30.0
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
        "target_p50_ms": TARGET_P50_MS,
    }


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, taking turns, so a change of load on a shared
    machine falls on every one alike (the ratio between them is what is compared)."""
    for fn in fns.values():
        for _ in range(5):
            fn()  # warm-up: tracing, kernel selection, tensor allocation
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000)
    return samples


def lean_vs_keras(repeats: int = 200) -> dict:
    """The production model (v2: lung segmentation, crop, classification) on the Keras
    direct call (``tf.function``) and on LiteRT (the inference worker's runtime), in the
    same process, taking turns: the whole ``Classifier.predict`` (segmentation included),
    the classifier's model call alone and the U-Net's alone. LiteRT with 1 thread (the
    worker's setting, ``CXR_INFERENCE_THREADS``) and 2; Keras with TensorFlow's default
    thread pools (one thread per core)."""
    from ml.serving.runtime import lite_path_for

    card = read_card(LUNG_MODEL)
    source = card["sha256"]
    lite_path = lite_path_for(LUNG_MODEL)
    keras_clf = Classifier.load(LUNG_MODEL, expected_sha256=source)
    lite = {
        threads: Classifier.load_lite(
            lite_path, card=card, source_sha256=source, num_threads=threads
        )
        for threads in (1, 2)
    }
    image = open_image(IMAGE)
    keras_clf.predict(image)
    for clf in lite.values():
        clf.predict(image)
    x = keras_clf.prepare(image)[0].x[np.newaxis]
    size = keras_clf.segmenter.size
    lungs_in = np.zeros((1, size, size, 1), np.float32) + 0.5
    whole = _interleaved(
        {
            "keras": lambda: keras_clf.predict(image),
            "litert_1_thread": lambda: lite[1].predict(image),
            "litert_2_threads": lambda: lite[2].predict(image),
        },
        repeats,
    )
    model = _interleaved(
        {
            "keras": lambda: keras_clf.predict_array(x),
            "litert_1_thread": lambda: lite[1].predict_array(x),
            "litert_2_threads": lambda: lite[2].predict_array(x),
        },
        repeats,
    )
    unet = _interleaved(
        {
            "keras": lambda: keras_clf.segmenter.probability(lungs_in),
            "litert_1_thread": lambda: lite[1].segmenter.probability(lungs_in),
        },
        repeats,
    )

    def table(samples: dict[str, list[float]]) -> dict:
        rows: dict = {name: _percentiles(v) for name, v in samples.items()}
        keras_p50 = rows["keras"]["p50_ms"]
        for name in samples:
            if name != "keras":
                rows[name]["speedup_over_keras"] = round(keras_p50 / rows[name]["p50_ms"], 2)
        return rows

    # Largest probability difference between the paths on this image (same lungs).
    lungs = lite[1].segmenter.segment(image)
    a = keras_clf.predict(image, lungs=lungs).probabilities
    b = lite[1].predict(image, lungs=lungs).probabilities
    return {
        "model": card["name"],
        "image_px": list(image.size),
        "predict_with_segmentation": table(whole),
        "classifier_call": table(model),
        "unet_call": table(unet),
        "max_abs_probability_difference": float(max(abs(a[c] - b[c]) for c in a)),
        "target_speedup": 3.0,
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
        results["lean_vs_keras"] = lean_vs_keras(repeats)
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

"""Training time per epoch: a short real training run of the default architecture.

``python -m ml classifier train`` in a child process for ``EPOCHS`` epochs on a random
subset of the shared data sets (``CXR_SHARED_DATASETS``), else on the 18
fixture images; the model card records the fit's seconds and epochs, and the
process's peak RSS is sampled meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from ml.models.artifacts import read_card

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3
LIMIT = 600
SHARED = ("covid-chestxray", "pediatric-pneumonia", "adult-normal")


def _data() -> tuple[list[str], str, list[str]]:
    value = os.environ.get("CXR_SHARED_DATASETS")
    if value and all((Path(value) / name).is_dir() for name in SHARED):
        folders = [str(Path(value) / name) for name in SHARED]
        return folders, f"random {LIMIT} images of the shared data sets", ["--limit", str(LIMIT)]
    fixtures = ROOT / "tests" / "fixtures" / "images"
    return [str(fixtures)], "the 18 fixture images", ["--layout", "generic"]


def measure() -> dict:
    folders, description, extra = _data()
    with tempfile.TemporaryDirectory(prefix="cxr-bench-train-") as tmp:
        command = [
            sys.executable, "-m", "ml", "classifier", "train", "--data", *folders, *extra,
            "--out", tmp, "--name", "bench", "--epochs", str(EPOCHS), "--patience", "100",
            "--no-gradcam-animation", "--bootstrap", "10", "--seed", "0", "--quiet",
        ]  # fmt: skip
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        peak = 0

        def sample() -> None:
            nonlocal peak
            while process.poll() is None:
                try:
                    peak = max(peak, psutil.Process(process.pid).memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output, _ = process.communicate(timeout=600)
        sampler.join(timeout=1)
        wall = time.perf_counter() - started
        if process.returncode:
            raise RuntimeError(f"training failed:\n{output.decode(errors='replace')[-3000:]}")
        card = read_card(Path(tmp) / "bench.keras")
    training = card["training"]
    counts = card["data"]["split"]["counts"]
    return {
        "data": description,
        "train_images": counts["train"],
        "epochs": training["epochs_run"],
        "fit_seconds": training["seconds"],
        "seconds_per_epoch": training["seconds_per_epoch"],
        "process_seconds": round(wall, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "architecture": card["architecture"],
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))

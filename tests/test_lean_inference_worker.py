"""A real inference worker (``-Q inference``) classifies and segments on LiteRT without
ever loading TensorFlow, and stays small.

Checked from outside, on every process of the worker (main and pool child): no shared
library of TensorFlow or Keras is mapped (``/proc/<pid>/maps``; importing TensorFlow
maps ``libtensorflow_framework``), and the resident memory stays under the 400 MB target
(a worker that imports TensorFlow is above 1 GB).
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from django.conf import settings

from apps.cases import services
from apps.cases.models import Prediction
from apps.models.services import register_artifact
from tests.conftest import upload_of
from tests.workers import start_worker, stop_worker, wait_for_log

BUNDLED_V2 = Path(settings.BASE_DIR) / "ml" / "bundled" / "cxr-lungs" / "cxr-lungs.keras"
RSS_LIMIT_MB = 400
HEAVY = ("/site-packages/tensorflow/", "/site-packages/keras/", "libtensorflow")


def _worker_processes(pid: int) -> list[psutil.Process]:
    main = psutil.Process(pid)
    return [main, *main.children(recursive=True)]


def _heavy_libraries(process: psutil.Process) -> list[str]:
    maps = Path(f"/proc/{process.pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if any(h in line for h in HEAVY)})


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_inference_worker_serves_the_v2_model_without_tensorflow(clinician, media_root, tmp_path):
    version = register_artifact(artifact_path=BUNDLED_V2, make_production=True)
    assert version.card["lite"]["source_sha256"] == version.sha256
    log_path = tmp_path / "worker.log"
    process = start_worker(
        log_path=log_path,
        media_root=media_root,
        queues="inference",
        extra_env={"CXR_INFERENCE_RUNTIME": "litert"},
    )
    try:
        wait_for_log(log_path, "ready.", process)
        wait_for_log(log_path, "loading model version", process)
        case = services.create_case(
            owner=clinician, files=[upload_of("2168a917.jpg"), upload_of("00001280_004.jpg")]
        )
        predictions = Prediction.objects.filter(image__case=case)
        deadline = time.monotonic() + 120
        peak: dict[int, int] = {}
        while time.monotonic() < deadline:
            for p in _worker_processes(process.pid):
                peak[p.pid] = max(peak.get(p.pid, 0), p.memory_info().rss)
            if all(p.status in {"done", "failed"} for p in predictions.all()):
                break
            assert process.poll() is None, log_path.read_text()[-4000:]
            time.sleep(0.2)
        rows = list(predictions.all())
        assert [p.status for p in rows] == ["done", "done"], [p.error for p in rows]
        for prediction in rows:
            assert prediction.model_version_id == version.pk
            assert prediction.lungs_found is True  # the LiteRT U-Net found both lungs
            assert prediction.lung_mask
            assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)

        processes = _worker_processes(process.pid)
        assert len(processes) >= 2  # the main process and its pool child
        for p in processes:
            assert _heavy_libraries(p) == [], p.cmdline()
            peak[p.pid] = max(peak.get(p.pid, 0), p.memory_info().rss)
        assert max(peak.values()) / 2**20 < RSS_LIMIT_MB, peak
        log = log_path.read_text()
        assert "(litert)" in log  # the model and the lung segmenter were loaded on LiteRT
        assert "serving it with Keras" not in log
    finally:
        stop_worker(process)

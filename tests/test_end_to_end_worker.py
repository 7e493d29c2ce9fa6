"""A real Celery worker process classifies an upload.

Broker and database are whatever the test run uses: in CI, Redis and
PostgreSQL (``.ci/run`` sets ``CELERY_BROKER_URL`` and ``DATABASE_URL``);
on a bare machine, the filesystem broker and SQLite.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
from urllib.parse import quote

import numpy as np
import pytest
from django.conf import settings
from django.db import connection

from apps.cases import services
from apps.cases.models import Prediction
from apps.explain.models import Explanation
from tests.conftest import REPO_ROOT, upload_of


def _worker_database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def worker(tmp_path, media_root):
    queues = "inference,explain"
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=_worker_database_url(),
        MEDIA_ROOT=str(media_root),
        CXR_VAR_DIR=str(settings.VAR_DIR),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CXR_WARM_MODEL="1",
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "cxrplatform",
                "worker",
                "-Q",
                queues,
                "--concurrency",
                "1",
                "--pool",
                "prefork",
                "--loglevel",
                "INFO",
                "--hostname",
                f"e2e-{uuid.uuid4().hex[:8]}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_finished(queryset, count, process, log_path, what):
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rows = list(queryset.all())
        if len(rows) == count and all(r.status in {"done", "failed"} for r in rows):
            return rows
        assert process.poll() is None, "worker exited:\n" + log_path.read_text()[-4000:]
        time.sleep(0.5)
    pytest.fail(f"{what} not finished within 180 s; worker log:\n{log_path.read_text()[-4000:]}")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_real_worker_classifies_an_uploaded_image_and_explains_it(
    clinician, production_model, worker
):
    process, log_path = worker
    case = services.create_case(
        owner=clinician, files=[upload_of("2168a917.jpg"), upload_of("00001280_004.jpg")]
    )
    predictions = Prediction.objects.filter(image__case=case)
    _wait_until_finished(predictions, 2, process, log_path, "predictions")

    for prediction in predictions.all():
        assert prediction.status == "done", prediction.error
        assert prediction.model_version_id == production_model.pk
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.label in {"covid19", "pneumonia", "normal"}

    # Each prediction queued a Grad-CAM on the explain queue; the worker ran it.
    explanations = Explanation.objects.filter(image__case=case)
    for explanation in _wait_until_finished(explanations, 2, process, log_path, "Grad-CAMs"):
        assert explanation.status == "done", explanation.error
        assert explanation.method == "gradcam"
        with explanation.heatmap.open("rb") as fh:
            heatmap = np.load(io.BytesIO(fh.read()))
        assert heatmap.shape == (128, 128)
        assert float(heatmap.max()) == pytest.approx(1.0)
        with explanation.overlay.open("rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    log = log_path.read_text()
    assert "apps.cases.tasks.classify_image" in log
    assert "apps.explain.tasks.explain_image" in log
    assert "succeeded" in log

"""Health, metrics and logs with a real Celery worker: `celery inspect ping` (the
workers' docker-compose healthcheck) answers, /metrics counts the worker per queue, and
an upload's request id reaches the worker's JSON log lines with the task id and job id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

from apps.cases.models import Case, Prediction
from cxrplatform.metrics import forget_workers
from tests.conftest import REPO_ROOT, upload_of
from tests.workers import start_worker, stop_worker, wait_for_log, worker_database_url


def _celery_env(media_root) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=worker_database_url(),
        MEDIA_ROOT=str(media_root),
        CXR_VAR_DIR=str(settings.VAR_DIR),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CXR_TESTS_KEYPREFIX=str(
            settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
        ),
    )
    return env


def _json_lines(text: str) -> list[dict]:
    lines = []
    for raw in text.splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
    return lines


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_answers_ping_counts_in_metrics_and_logs_the_uploads_request_id(
    client, clinician, production_model, media_root, tmp_path, settings
):
    hostname = f"ops-{uuid.uuid4().hex[:8]}@localhost"
    log_path = tmp_path / "worker.log"
    process = start_worker(
        log_path=log_path,
        media_root=media_root,
        queues="inference",
        hostname=hostname,
        extra_env={"CXR_LOG_FORMAT": "json", "LOG_LEVEL": "INFO"},
    )
    try:
        wait_for_log(log_path, "ready.", process)

        # The workers' healthcheck: exit status 0 and a pong from this worker.
        ping = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "cxrplatform", "inspect", "ping",
             "-d", hostname, "--timeout", "10"],
            cwd=REPO_ROOT, env=_celery_env(media_root), capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "pong" in ping.stdout
        missing = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "cxrplatform", "inspect", "ping",
             "-d", "nobody@nowhere", "--timeout", "2"],
            cwd=REPO_ROOT, env=_celery_env(media_root), capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert missing.returncode != 0  # a worker that is gone fails the healthcheck

        # /metrics: the worker is counted on its queue.
        settings.CXR_METRICS_INSPECT_TIMEOUT = 5.0
        forget_workers()
        text = client.get("/metrics").content.decode()
        workers = {
            s.labels["queue"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "cxr_workers"
        }
        assert workers["inference"] >= 1, workers
        assert workers["training"] == 0

        # An upload with a request id: the worker's lines for its job carry it.
        client.force_login(clinician)
        response = client.post(
            reverse("cases:create"),
            {"images": [upload_of("2168a917.jpg")], "patient_ref": "P-LOG"},
            HTTP_X_REQUEST_ID="req-worker-ops-1",
        )
        assert response.status_code == 302
        prediction = Prediction.objects.get(image__case=Case.objects.get(owner=clinician))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            prediction.refresh_from_db()
            if prediction.is_finished:
                break
            assert process.poll() is None, log_path.read_text()[-4000:]
            time.sleep(0.5)
        assert prediction.status == "done", prediction.error
        time.sleep(1)  # the "task finished" line follows the commit
    finally:
        stop_worker(process)
        forget_workers()
    lines = _json_lines(log_path.read_text())
    assert lines, log_path.read_text()[-3000:]
    job_lines = [line for line in lines if line.get("job_id") == f"prediction:{prediction.pk}"]
    assert job_lines, lines[-10:]
    for line in job_lines:
        assert line["request_id"] == "req-worker-ops-1"
        assert line["user_id"] == str(clinician.pk)
        assert line["task_id"]
    messages = [line["message"] for line in job_lines]
    assert any(
        m.startswith("task started: cxrplatform.jobs.run_job:cases.prediction") for m in messages
    )
    assert any(m.startswith("task finished") and "state=SUCCESS" in m for m in messages)
    assert "P-LOG" not in log_path.read_text()  # no patient reference in the logs

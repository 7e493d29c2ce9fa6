"""SIGKILL a real worker while it is inside a task: the task is delivered again and completes.

Two cases, because they recover differently:

* the pool process dies (OOM killer, a segfault in native code): the worker's
  main process sees it, and ``reject_on_worker_lost`` puts the message back at
  once. Works with every broker, so this test uses the run's own (Redis in CI,
  the filesystem broker on a bare clone).
* the whole worker dies (machine lost, ``kill -9`` of the group): nobody is left
  to reject. The message stays unacknowledged in Redis until the visibility
  timeout passes, then any worker restores it. The test's own Redis and a short
  visibility timeout keep that bounded. (The filesystem broker has no
  unacknowledged state, so this case needs Redis; the beat sweeper is what
  recovers such a job there.)
"""

from __future__ import annotations

import signal

import psutil
import pytest

from apps.cases import services
from apps.cases.models import Prediction
from apps.explain.models import Explanation
from tests.conftest import upload_of
from tests.reliability.conftest import broker, wait_for
from tests.workers import start_worker, stop_worker, wait_for_log

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def _status(prediction_id: int) -> str:
    return Prediction.objects.get(pk=prediction_id).status


def test_task_of_a_sigkilled_pool_process_is_redelivered_and_completes(
    clinician, production_model, media_root, tmp_path
):
    log = tmp_path / "worker.log"
    process = start_worker(
        log_path=log,
        media_root=media_root,
        extra_env={"CXR_TEST_PAUSE_AFTER_RUNNING_SECONDS": "4"},
    )
    try:
        wait_for_log(log, "ready.", process)
        case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
        prediction = Prediction.objects.get(image__case=case)
        wait_for(
            lambda: _status(prediction.pk) == "running",
            timeout=60,
            what="prediction running",
            logs=(log,),
        )
        children = psutil.Process(process.pid).children()
        assert len(children) == 1, children  # --concurrency 1: one pool process
        children[0].send_signal(signal.SIGKILL)

        wait_for(
            lambda: _status(prediction.pk) in {"done", "failed"},
            timeout=90,
            what="prediction finished after the kill",
            logs=(log,),
        )
        prediction.refresh_from_db()
        assert prediction.status == "done", prediction.error
        assert prediction.attempts == 2  # the killed run, then the redelivered one
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        text = log.read_text()
        assert "WorkerLostError" in text or "signal 9" in text
        assert process.poll() is None, "the worker's main process survives its pool child"
        # The chain goes on: the Grad-CAM queued by the redelivered run finishes too.
        wait_for(
            lambda: Explanation.objects.filter(image__case=case, status="done").exists(),
            timeout=60,
            what="Grad-CAM done",
            logs=(log,),
        )
    finally:
        stop_worker(process)


def test_task_of_a_sigkilled_worker_is_redelivered_to_a_new_worker(
    clinician, production_model, media_root, tmp_path, redis_server
):
    redelivery = {"CXR_BROKER_VISIBILITY_TIMEOUT": "3", "CXR_BROKER_RESTORE_INTERVAL": "1"}
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start_worker(
        log_path=first_log,
        media_root=media_root,
        broker_url=redis_server.url,
        hostname="first@%h",
        extra_env={**redelivery, "CXR_TEST_PAUSE_AFTER_RUNNING_SECONDS": "60"},
    )
    second = None
    try:
        wait_for_log(first_log, "ready.", first)
        with broker(redis_server.url):
            case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
        prediction = Prediction.objects.get(image__case=case)
        wait_for(
            lambda: _status(prediction.pk) == "running",
            timeout=60,
            what="prediction running",
            logs=(first_log,),
        )
        stop_worker(first, signal.SIGKILL)  # main process and pool child, no goodbye
        assert first.returncode == -signal.SIGKILL
        assert _status(prediction.pk) == "running"  # nobody told the database

        second = start_worker(
            log_path=second_log,
            media_root=media_root,
            broker_url=redis_server.url,
            hostname="second@%h",
            extra_env=redelivery,
        )
        wait_for(
            lambda: _status(prediction.pk) in {"done", "failed"},
            timeout=90,
            what="prediction finished by the second worker",
            logs=(first_log, second_log),
        )
        prediction.refresh_from_db()
        assert prediction.status == "done", prediction.error
        assert prediction.attempts == 2
        # The row is written before the worker logs the task's end: wait for the line.
        wait_for_log(second_log, "succeeded", second, timeout=30)
        assert "cxrplatform.jobs.run_job:cases.prediction" in second_log.read_text()
    finally:
        stop_worker(first, signal.SIGKILL)
        if second is not None:
            stop_worker(second)

"""The scaling topology on one machine: one worker per queue, each task on its queue's worker.

README "Scaling": inference, explanation and training workers are separate
processes consuming separate queues (on separate machines in production).
Two real workers here, ``-Q inference`` and ``-Q explain``; each logs the
tasks it received, so the logs show where each task ran.
"""

from __future__ import annotations

import pytest

from apps.cases import services
from apps.cases.models import Prediction
from apps.explain.models import Explanation
from tests.conftest import upload_of
from tests.reliability.conftest import wait_for
from tests.workers import start_worker, stop_worker, wait_for_log

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_each_task_runs_on_the_worker_of_its_queue(
    clinician, production_model, media_root, tmp_path
):
    inference_log, explain_log = tmp_path / "inference.log", tmp_path / "explain.log"
    inference = start_worker(
        log_path=inference_log, media_root=media_root, queues="inference", hostname="inference@%h"
    )
    explain = start_worker(
        log_path=explain_log,
        media_root=media_root,
        queues="explain",
        hostname="explain@%h",
        extra_env={"CXR_WARM_MODEL": "0"},  # as in docker-compose: loads on first task
    )
    try:
        wait_for_log(inference_log, "ready.", inference)
        wait_for_log(explain_log, "ready.", explain)
        case = services.create_case(
            owner=clinician, files=[upload_of("2168a917.jpg"), upload_of("5f619d7e.jpg")]
        )
        wait_for(
            lambda: Explanation.objects.filter(image__case=case, status="done").count() == 2,
            timeout=120,
            what="two Grad-CAMs done",
            logs=(inference_log, explain_log),
        )
        assert set(
            Prediction.objects.filter(image__case=case).values_list("status", flat=True)
        ) == {"done"}
        inference_text, explain_text = inference_log.read_text(), explain_log.read_text()
        prediction, explanation = (
            "Task cxrplatform.jobs.run_job:cases.prediction[",
            "Task cxrplatform.jobs.run_job:explain.explanation[",
        )
        assert inference_text.count(prediction) >= 2
        assert explanation not in inference_text
        assert explain_text.count(explanation) >= 2
        assert prediction not in explain_text
        assert "inference@" in inference_text
        assert "explain@" in explain_text
    finally:
        stop_worker(inference)
        stop_worker(explain)

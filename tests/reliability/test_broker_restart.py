"""Redis goes away and comes back empty: no upload is lost, every job finishes.

The test owns a ``redis-server`` without persistence, so a restart drops every
queued and unacknowledged message: the worst a broker restart can do. The
worker runs with an embedded beat whose sweeper (every 2 s here, every 5 min
by default) queues again the jobs that are still ``pending`` after a few
seconds, i.e. whose message never reached a worker.
"""

from __future__ import annotations

import logging

import pytest
from knox.models import AuthToken
from rest_framework.test import APIClient

from apps.cases.models import Case, CaseImage, Prediction
from apps.explain.models import Explanation
from tests.conftest import upload_of
from tests.reliability.conftest import broker, wait_for
from tests.workers import start_worker, stop_worker, wait_for_log

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

FINISHED = {"done", "failed"}


def _upload(client: APIClient, *names: str) -> dict:
    response = client.post(
        "/api/v1/cases/", {"images": [upload_of(n) for n in names]}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    return response.json()


def _all_finished(model, case_ids) -> bool:
    rows = list(model.objects.filter(image__case_id__in=case_ids))
    return bool(rows) and all(row.status in FINISHED for row in rows)


def test_uploads_survive_a_redis_outage_and_a_restart_mid_processing(
    clinician, production_model, media_root, tmp_path, redis_server, caplog
):
    log = tmp_path / "worker.log"
    process = start_worker(
        log_path=log,
        media_root=media_root,
        queues="inference,explain,default",
        broker_url=redis_server.url,
        extra_env={
            "CXR_TEST_PAUSE_AFTER_RUNNING_SECONDS": "2",
            "CXR_STUCK_SWEEP_SECONDS": "2",
            "CXR_PENDING_REQUEUE_SECONDS": "4",
            "CXR_BROKER_RESTORE_INTERVAL": "1",
        },
        extra_args=("--beat", "--schedule", str(tmp_path / "beat-schedule")),
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {AuthToken.objects.create(user=clinician)[1]}")
    try:
        wait_for_log(log, "ready.", process)
        with broker(redis_server.url):
            # 1. Upload while Redis is down: stored and answered 201, queued later.
            redis_server.stop()
            with caplog.at_level(logging.WARNING, logger="cxrplatform.jobs"):
                during_outage = _upload(client, "2168a917.jpg", "5f619d7e.jpg")
            assert "could not queue cases.prediction" in caplog.text
            case_a = Case.objects.get(pk=during_outage["id"])
            assert case_a.images.count() == 2
            for image in case_a.images.all():
                assert image.file.storage.exists(image.file.name)
            statuses = set(
                Prediction.objects.filter(image__case=case_a).values_list("status", flat=True)
            )
            assert statuses == {"pending"}

            redis_server.start()  # empty: the messages were never there
            wait_for(
                lambda: _all_finished(Prediction, [case_a.pk]),
                timeout=120,
                what="predictions of the upload made during the outage",
                logs=(log,),
            )

            # 2. Restart Redis while a prediction is running and others are queued.
            mid = _upload(client, "4d98e1de.jpg", "00001280_004.jpg")
            wait_for(
                lambda: Prediction.objects.filter(
                    image__case_id=mid["id"], status="running"
                ).exists(),
                timeout=60,
                what="a prediction of the second upload running",
                logs=(log,),
            )
            redis_server.restart()
            case_ids = [case_a.pk, mid["id"]]
            wait_for(
                lambda: (
                    _all_finished(Prediction, case_ids) and _all_finished(Explanation, case_ids)
                ),
                timeout=150,
                what="every prediction and Grad-CAM after the restart",
                logs=(log,),
            )

            # 3. Nothing lost: every image is stored and classified; anything that
            # failed says why and can be retried.
            images = CaseImage.objects.filter(case_id__in=case_ids)
            assert images.count() == 4
            for image in images:
                assert image.file.name
                assert image.file.storage.exists(image.file.name)
            failed = list(Prediction.objects.filter(image__case_id__in=case_ids, status="failed"))
            for prediction in failed:
                assert prediction.error
                response = client.post(f"/api/v1/images/{prediction.image_id}/prediction/retry/")
                assert response.status_code == 202
            wait_for(
                lambda: (
                    not Prediction.objects.filter(image__case_id__in=case_ids)
                    .exclude(status="done")
                    .exists()
                ),
                timeout=90,
                what="retried predictions done",
                logs=(log,),
            )
            for prediction in Prediction.objects.filter(image__case_id__in=case_ids):
                assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
            assert set(
                Explanation.objects.filter(image__case_id__in=case_ids).values_list(
                    "status", flat=True
                )
            ) == {"done"}
        text = log.read_text()
        assert "cxrplatform.jobs.sweep_stuck_jobs" in text  # beat ran the sweeper
    finally:
        stop_worker(process)
        redis_server.stop()

"""Jobs stuck in ``running`` past their hard time limit: the beat task finds them.

The worker that ran them is gone (killed, its machine lost, its message gone
with a broker restart), so nothing else will ever finish them. The real beat
task, the one sweeper of every job kind (run here in this process with
``Task.apply``; a real beat runs it in tests/reliability/test_broker_restart.py),
marks them failed with the reason, and a failed prediction can be retried
through the API and completes.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from apps.cases import services
from apps.cases.models import Prediction
from apps.explain.models import Explanation, Inspection
from apps.models import services as registry
from apps.models.datasets import import_reference_dataset
from apps.models.models import TrainingRun
from cxrplatform.celery import app
from cxrplatform.jobs import registered_task, run_job, run_job_now, sweep_stuck_jobs
from tests.conftest import IMAGES, upload_of

pytestmark = pytest.mark.django_db


def _started_long_ago(model, pk: int, queue: str, settings) -> None:
    """As if its worker died just after ``mark_running``: past the limit and the grace."""
    hard = settings.CXR_TASK_HARD_LIMITS[queue]
    model.objects.filter(pk=pk).update(started_at=timezone.now() - timedelta(seconds=hard + 61))


@pytest.mark.slow
def test_stuck_prediction_is_failed_with_the_reason_and_a_retry_completes_it(
    clinician, production_model, settings, django_capture_on_commit_callbacks
):
    case = services.create_case(
        owner=clinician, files=[upload_of("2168a917.jpg"), upload_of("5f619d7e.jpg")]
    )
    stuck, recent = Prediction.objects.filter(image__case=case).order_by("pk")
    stuck.mark_running()
    recent.mark_running()
    _started_long_ago(Prediction, stuck.pk, "inference", settings)

    result = sweep_stuck_jobs.apply().get()
    assert result["cases.prediction"] == {"failed": 1, "requeued": 0}
    stuck.refresh_from_db()
    recent.refresh_from_db()
    assert stuck.status == "failed"
    assert "No result within the 120 s time limit" in stuck.error
    assert recent.status == "running"  # within its limit: still someone's job
    assert case.status == "processing"

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {AuthToken.objects.create(user=clinician)[1]}")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(f"/api/v1/images/{stuck.image_id}/prediction/retry/")
    assert response.status_code == 202
    assert len(callbacks) == 1
    run_job.apply(kwargs={"job": "cases.prediction", "pk": stuck.pk}).get()  # the queued task
    stuck.refresh_from_db()
    assert stuck.status == "done"
    assert stuck.attempts == 2
    assert stuck.label in {"covid19", "pneumonia", "normal"}


def test_stuck_explanation_is_failed_and_asking_again_queues_a_new_one(
    clinician, production_model, settings, django_capture_on_commit_callbacks
):
    from apps.explain.services import request_explanation

    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    run_job_now(Prediction, prediction.pk)
    explanation = Explanation.objects.get(image__case=case)
    explanation.mark_running()
    _started_long_ago(Explanation, explanation.pk, "explain", settings)

    assert sweep_stuck_jobs.apply().get()["explain.explanation"] == {"failed": 1, "requeued": 0}
    explanation.refresh_from_db()
    assert explanation.status == "failed"
    assert "time limit" in explanation.error
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        again = request_explanation(image=explanation.image, method=explanation.method)
    assert again.pk != explanation.pk
    assert again.status == "pending"
    assert len(callbacks) == 1


def test_stuck_training_run_is_failed_so_it_no_longer_blocks_the_next_one(
    model_admin, production_model, settings
):
    import_reference_dataset(IMAGES / "manifest.csv", "generic")
    run = registry.start_training_run(requested_by=model_admin)
    run.mark_running()
    _started_long_ago(TrainingRun, run.pk, "training", settings)

    assert sweep_stuck_jobs.apply().get()["registry.trainingrun"] == {"failed": 1, "requeued": 0}
    run.refresh_from_db()
    assert run.status == "failed"
    assert "time limit" in run.error
    assert registry.active_training_run() is None
    second = registry.start_training_run(requested_by=model_admin)
    assert second.status == "pending"


def test_pending_job_whose_message_was_lost_is_queued_again(
    clinician, production_model, settings, django_capture_on_commit_callbacks
):
    settings.CXR_PENDING_REQUEUE_SECONDS = 30
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    lost = Prediction.objects.get(image__case=case)
    Prediction.objects.filter(pk=lost.pk).update(queued_at=timezone.now() - timedelta(minutes=1))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = sweep_stuck_jobs.apply().get()
    assert result["cases.prediction"] == {"failed": 0, "requeued": 1}
    assert len(callbacks) == 1
    assert Prediction.objects.get(pk=lost.pk).status == "pending"


def _run_every_beat_task() -> None:
    """What beat sends every few minutes, each scheduled task run here in-process."""
    for entry in app.conf.beat_schedule.values():
        registered_task(entry["task"]).apply().get()


@pytest.mark.slow
def test_inspection_whose_worker_vanished_is_failed_and_a_lost_one_is_queued_again_and_runs(
    clinician, model_admin, production_model, settings, django_capture_on_commit_callbacks
):
    settings.CXR_PENDING_REQUEUE_SECONDS = 30
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    image = case.images.get()
    stuck, lost = (
        Inspection.objects.create(
            model_version=production_model, case_image=image, requested_by=model_admin
        )
        for _ in range(2)
    )
    stuck.mark_running()
    _started_long_ago(Inspection, stuck.pk, "explain", settings)
    Inspection.objects.filter(pk=lost.pk).update(queued_at=timezone.now() - timedelta(minutes=1))

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        _run_every_beat_task()
    stuck.refresh_from_db()
    assert stuck.status == "failed"
    hard = settings.CXR_TASK_HARD_LIMITS["explain"]
    assert f"No result within the {hard} s time limit" in stuck.error
    assert Inspection.objects.get(pk=lost.pk).status == "pending"
    assert len(callbacks) == 1  # the lost inspection's task, sent once this commits
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True  # run the queued task's body here
    try:
        callbacks[0]()
    finally:
        app.conf.task_always_eager = eager
    lost.refresh_from_db()
    assert lost.status == "done", lost.error
    assert lost.pictures.filter(kind="gradcam").exists()

"""Lost and lethal messages are bounded.

The sweeper sends a pending job again only when its last message is stale (sent
``CXR_PENDING_REQUEUE_SECONDS`` ago), so sweep after sweep does not pile up messages for
one job. Every re-send and every claim counts, and after ``CXR_JOB_MAX_ATTEMPTS`` the job
is failed with the reason: a message whose worker dies every time it runs it (a poison
image, an out-of-memory model) stops being redelivered for ever, and a job whose
messages never reach a worker says so. ``cxr_jobs_given_up_last_hour`` counts them for
the alert. Messages are counted where the app hands them to the broker (``send_task``).
"""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from apps.cases import services
from apps.cases.models import Prediction
from cxrplatform.celery import app
from cxrplatform.jobs import claim_job, retry_job, run_job, sweep_all
from cxrplatform.metrics import forget_workers
from tests.conftest import upload_of
from tests.ops.test_metrics import scrape, value

pytestmark = pytest.mark.django_db

LABEL = "cases.prediction"


@pytest.fixture
def sent():
    """Every message the app sends, as (task name, kwargs)."""
    with mock.patch.object(app, "send_task") as send_task:
        yield lambda: [(c.args[0], c.args[2]) for c in send_task.call_args_list]


@pytest.fixture
def prediction(clinician, sent, django_capture_on_commit_callbacks) -> Prediction:
    """A pending prediction whose upload sent its message (then lost on the way)."""
    with django_capture_on_commit_callbacks(execute=True):
        case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    job = Prediction.objects.get(image__case=case)
    assert sent() == [("cxrplatform.jobs.run_job", {"job": LABEL, "pk": job.pk})]
    return job


def _sweep(at, capture) -> None:
    """One beat of the sweeper at time ``at``; what it queues is sent on commit."""
    with capture(execute=True):
        sweep_all(now=at)


def test_three_sweeps_of_a_lost_pending_job_send_one_message(
    prediction, sent, settings, django_capture_on_commit_callbacks
):
    settings.CXR_PENDING_REQUEUE_SECONDS = 600
    first_sweep = timezone.now() + timedelta(minutes=15)  # the message is long lost
    for beat in range(3):  # beat sweeps every 5 minutes
        _sweep(first_sweep + timedelta(minutes=5 * beat), django_capture_on_commit_callbacks)
    resent = sent()[1:]
    assert resent == [("cxrplatform.jobs.run_job", {"job": LABEL, "pk": prediction.pk})]
    prediction.refresh_from_db()
    assert prediction.status == "pending"
    assert prediction.queued_at == first_sweep
    # The first beat after that message is stale too sends it once more.
    _sweep(first_sweep + timedelta(minutes=15), django_capture_on_commit_callbacks)
    assert len(sent()) == 3


def test_a_pending_job_no_worker_takes_is_failed_with_the_reason_after_max_attempts(
    prediction, sent, settings, django_capture_on_commit_callbacks
):
    settings.CXR_PENDING_REQUEUE_SECONDS = 600
    settings.CXR_JOB_MAX_ATTEMPTS = 3
    start = timezone.now() + timedelta(minutes=15)
    for beat in range(4):  # each sweep finds the last message stale
        _sweep(start + timedelta(minutes=15 * beat), django_capture_on_commit_callbacks)
    assert len(sent()) == 1 + 3  # the upload's message and three re-sends, no more
    prediction.refresh_from_db()
    assert prediction.status == "failed"
    assert prediction.error.startswith("Given up after 3 attempts")
    assert "no worker took it" in prediction.error
    assert "inference queue" in prediction.error


@pytest.mark.slow
def test_a_message_that_kills_its_worker_every_time_is_given_up_and_counted(
    prediction, settings, client, clinician, sent
):
    settings.CXR_JOB_MAX_ATTEMPTS = 3
    settings.CXR_METRICS_INSPECT_TIMEOUT = 0.2  # no worker answers here
    forget_workers()
    for _ in range(3):
        # A delivery whose worker is killed right after it claimed the job (the broker
        # redelivers an unacknowledged message: acks_late, reject_on_worker_lost).
        claimed = claim_job(Prediction, prediction.pk)
        assert claimed is not None
        assert claimed.status == "running"
    run_job.apply(kwargs={"job": LABEL, "pk": prediction.pk}).get()  # the fourth delivery
    prediction.refresh_from_db()
    assert prediction.status == "failed"
    assert prediction.error.startswith("Given up after 3 attempts")
    assert "worker was lost or killed" in prediction.error
    assert prediction.attempts == 3  # the fourth delivery ran nothing

    samples = scrape(client)
    assert value(samples, "cxr_jobs_given_up_last_hour", kind="prediction") == 1
    assert value(samples, "cxr_jobs_given_up_last_hour", kind="explanation") == 0

    # A person's retry gives it a fresh allowance: it is claimed and runs again.
    retry_job(prediction, actor=clinician)
    job = claim_job(Prediction, prediction.pk)
    assert job is not None
    assert (job.status, job.attempts) == ("running", 4)

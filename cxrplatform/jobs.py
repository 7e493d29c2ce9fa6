"""Jobs as state machines: pending -> running -> done | failed.

Prediction, Explanation (and later TrainingRun) share this base so every job
has the same timestamps, error field and one path per transition, and the
beat sweeper can treat them alike (grand-challenge ``ComponentJob``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, models, transaction
from django.utils import timezone

log = logging.getLogger(__name__)


class JobStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class Job(models.Model):
    Status = JobStatus

    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.PENDING)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def is_finished(self) -> bool:
        return self.status in {JobStatus.DONE, JobStatus.FAILED}

    def mark_running(self) -> None:
        self.status = JobStatus.RUNNING
        self.started_at = timezone.now()
        self.attempts += 1
        self.error = ""
        self.save(update_fields=["status", "started_at", "attempts", "error"])
        pause = settings.CXR_TEST_PAUSE_AFTER_RUNNING_SECONDS
        if pause:
            # Test-only (off by default): keep the job observably `running` for a
            # while after the status commits, so a fault test can kill the worker
            # inside the task. Runs after commit, so no lock is held meanwhile.
            transaction.on_commit(lambda: time.sleep(pause))

    def _mark_done(self, **results: object) -> None:
        for name, value in results.items():
            setattr(self, name, value)
        self.status = JobStatus.DONE
        self.finished_at = timezone.now()
        self.error = ""
        self.save(update_fields=["status", "finished_at", "error", *results])

    def mark_failed(self, error: str) -> None:
        self.status = JobStatus.FAILED
        self.error = error[:5000]
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "error", "finished_at"])

    def reset_for_retry(self) -> None:
        """failed -> pending: the one way back, for an explicit retry (the error is kept
        until the next attempt starts, so the reason stays visible meanwhile)."""
        if self.status != JobStatus.FAILED:
            raise ValueError(f"Only a failed job can be retried; this one is {self.status}.")
        self.status = JobStatus.PENDING
        self.started_at = None
        self.finished_at = None
        self.save(update_fields=["status", "started_at", "finished_at"])


def enqueue_on_commit(task: Any, **kwargs: Any) -> None:
    """Send ``task`` with ``kwargs`` once the surrounding transaction commits.

    If the broker cannot be reached at that moment (Redis restarting), the
    data is already committed and must stay so: the error is logged, not
    raised into the request that stored the upload, and the job stays
    ``pending`` until the beat sweeper (``sweep_stuck``) queues it again.
    """

    def send() -> None:
        try:
            task.apply_async(kwargs=kwargs)
        except Exception:
            log.warning(
                "could not queue %s%s (broker unreachable?); the sweeper will queue it again",
                task.name,
                kwargs,
                exc_info=True,
            )

    transaction.on_commit(send)


def claim_job(model: type[Job], pk: int, *, related: tuple[str, ...] = ()) -> Job | None:
    """Lock a job row and mark it running, or say why there is nothing to do.

    Returns ``None`` when the row is gone, the finished job itself when it is
    already done or failed (a redelivered message does nothing), and otherwise
    the job marked ``running``. A job left ``running`` by a killed worker is
    claimed again. Only the job's own row is locked (``of=("self",)``):
    PostgreSQL refuses ``FOR UPDATE`` across nullable outer joins.
    """
    with transaction.atomic():
        job = (
            model.objects.select_for_update(of=("self",))
            .select_related(*related)
            .filter(pk=pk)
            .first()
        )
        if job is None:
            log.warning("%s %s no longer exists; nothing to do", model.__name__, pk)
            return None
        if job.is_finished:
            return job
        job.mark_running()
    return job


@contextmanager
def failure_recorded(job: Job, *, what: str) -> Iterator[None]:
    """Write any failure of the block on the job row, so no job is lost or stuck.

    Database errors propagate instead: the row cannot be written then, and the
    house task decorator retries them. A soft time limit becomes a failure
    with a plain message; anything else is logged with its traceback.
    """
    try:
        yield
    except DatabaseError:
        raise
    except SoftTimeLimitExceeded:
        job.mark_failed(f"{what} exceeded its time limit.")
    except Exception as exc:
        log.exception("%s %s failed", what, job.pk)
        job.mark_failed(f"{type(exc).__name__}: {exc}")


# A pending job older than CXR_PENDING_REQUEUE_SECONDS was probably lost
# (broker down when it was queued, or restarted without persistence); the
# sweeper queues it again. Running jobs get their hard time limit plus this
# grace before they count as stuck.
RUNNING_GRACE = timedelta(seconds=60)


def sweep_stuck(
    model: type[Job],
    *,
    hard_limit_seconds: int,
    enqueue: Callable[[Job], None],
    now=None,
) -> dict[str, int]:
    """Fail jobs whose worker vanished; requeue jobs that never reached a worker."""
    now = now or timezone.now()
    hard = timedelta(seconds=hard_limit_seconds)
    failed = 0
    stuck = model.objects.filter(
        status=JobStatus.RUNNING, started_at__lt=now - hard - RUNNING_GRACE
    ).values_list("pk", flat=True)
    for pk in stuck:
        with transaction.atomic():
            job = model.objects.select_for_update().get(pk=pk)
            if job.status != JobStatus.RUNNING:
                continue
            job.mark_failed(
                f"No result within the {hard_limit_seconds} s time limit: the worker stopped "
                "or timed out."
            )
            failed += 1
    requeued = 0
    for job in model.objects.filter(
        status=JobStatus.PENDING,
        created_at__lt=now - timedelta(seconds=settings.CXR_PENDING_REQUEUE_SECONDS),
    ):
        with transaction.atomic():
            enqueue(job)
        requeued += 1
    if failed or requeued:
        log.warning(
            "sweep %s: %d stuck job(s) failed, %d requeued", model.__name__, failed, requeued
        )
    return {"failed": failed, "requeued": requeued}

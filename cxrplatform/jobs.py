"""Jobs as state machines: pending -> running -> done | failed, and their one registry.

Every job kind (Prediction, Explanation, Inspection, TrainingRun, and every new
one) subclasses the abstract ``Job``: the same timestamps, error field and one
path per transition. A concrete subclass declares ``job_kind = JobKind(...)``:
the Celery task that runs it, that task's queue (and so its time limits) and
the keyword the task takes the primary key as. That declaration is the
registration: ``enqueue_job`` sends any job by its task's registered name, and
the one beat task ``sweep_stuck_jobs`` sweeps every registered kind, so a new
kind gets queueing, requeueing and the stuck-job sweep for free (grand-challenge
``ComponentJob`` and its generic tasks keyed by app label and model name).
A concrete Job without a ``job_kind`` fails the system checks (``jobs.E001``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core import checks
from django.db import DatabaseError, InterfaceError, OperationalError, models, transaction
from django.db.models.signals import class_prepared
from django.utils import timezone

from cxrplatform.celery import QUEUES, app, platform_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobKind:
    """What a concrete ``Job`` declares so the platform can run, requeue and sweep it.

    ``task`` is the registered Celery task name (declared with ``platform_task``
    on ``queue``); the task takes the job's primary key as ``pk_kwarg``. The
    queue sets the limits: the task's hard time limit is the queue's
    (``settings.CXR_TASK_HARD_LIMITS``), and the sweeper fails a job still
    ``running`` past that limit plus ``RUNNING_GRACE``.
    """

    task: str
    queue: str
    pk_kwarg: str

    def __post_init__(self) -> None:
        if self.queue not in QUEUES:
            raise ValueError(f"Unknown queue {self.queue!r}; expected one of {QUEUES}.")

    @property
    def hard_limit_seconds(self) -> int:
        return settings.CXR_TASK_HARD_LIMITS[self.queue]


class JobStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class Job(models.Model):
    Status = JobStatus
    # Set on every concrete subclass; the registry and the system check read it.
    job_kind: ClassVar[JobKind | None] = None

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


J = TypeVar("J", bound=Job)

# Concrete Job models by label ("cases.prediction"), filled as each class is prepared.
_REGISTRY: dict[str, type[Job]] = {}


def _register(sender: type[models.Model], **_kwargs: Any) -> None:
    if issubclass(sender, Job) and not sender._meta.proxy and sender.job_kind is not None:
        _REGISTRY[sender._meta.label_lower] = sender


class_prepared.connect(_register, dispatch_uid="cxrplatform.jobs.register")


def registered_jobs() -> dict[str, type[Job]]:
    """Every registered job model, by label (``app_label.modelname``)."""
    return dict(sorted(_REGISTRY.items()))


@checks.register()
def check_every_job_is_registered(app_configs=None, **_kwargs: Any) -> list[checks.CheckMessage]:
    """System check ``jobs.E001``: a concrete Job without a ``job_kind`` is never swept."""
    from django.apps import apps

    if app_configs is None:
        candidates = apps.get_models()
    else:
        candidates = [model for config in app_configs for model in config.get_models()]
    return [
        checks.Error(
            f"{model._meta.label} is a Job but declares no job_kind, so nothing queues or "
            "sweeps it.",
            hint="Add job_kind = JobKind(task=..., queue=..., pk_kwarg=...) to the model.",
            obj=model,
            id="jobs.E001",
        )
        for model in candidates
        if issubclass(model, Job) and not model._meta.proxy and model.job_kind is None
    ]


def registered_task(name: str) -> Any:
    """The Celery task registered as ``name``.

    A worker imports every app's ``tasks`` module when it starts; a web process
    never imports them (services queue by name), so the first lookup there
    discovers them. The task carries its own queue (routing) and options.
    """
    if name not in app.tasks:
        app.autodiscover_tasks(force=True)
    try:
        return app.tasks[name]
    except KeyError:
        raise LookupError(f"No Celery task is registered as {name!r}.") from None


def enqueue_on_commit(task: str, **kwargs: Any) -> None:
    """Send the task registered as ``task`` with ``kwargs`` once the transaction commits.

    The task is looked up by name, so services never import tasks modules. If
    the broker cannot be reached at that moment (Redis restarting), the data is
    already committed and must stay so: the error is logged, not raised into
    the request that stored the upload, and the job stays ``pending`` until the
    beat sweeper (``sweep_stuck_jobs``) queues it again.
    """
    registered = registered_task(task)  # a wrong name fails here, not after the commit

    def send() -> None:
        try:
            registered.apply_async(kwargs=kwargs)
        except Exception:
            log.warning(
                "could not queue %s%s (broker unreachable?); the sweeper will queue it again",
                task,
                kwargs,
                exc_info=True,
            )

    transaction.on_commit(send)


def enqueue_job(job: Job) -> None:
    """Queue the task that runs ``job`` (its kind's), once the transaction commits."""
    kind = type(job).job_kind
    if kind is None:
        raise TypeError(f"{type(job).__name__} declares no job_kind; it cannot be queued.")
    enqueue_on_commit(kind.task, **{kind.pk_kwarg: job.pk})


def claim_job(model: type[J], pk: int, *, related: tuple[str, ...] = ()) -> J | None:
    """Lock a job row and mark it running, or say why there is nothing to do.

    Returns ``None`` when the row is gone, the finished job itself when it is
    already done or failed (a redelivered message does nothing), and otherwise
    the job marked ``running``. A job left ``running`` by a killed worker is
    claimed again. Only the job's own row is locked (``of=("self",)``):
    PostgreSQL refuses ``FOR UPDATE`` across nullable outer joins.
    """
    # `_default_manager` is Django's handle for code written against any model (the
    # abstract Job declares no `objects` of its own); on every Job it is `objects`.
    with transaction.atomic():
        job = (
            model._default_manager.select_for_update(of=("self",))
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


def sweep_stuck(model: type[Job], *, now: datetime | None = None) -> dict[str, int]:
    """Fail jobs whose worker vanished; requeue jobs that never reached a worker."""
    kind = model.job_kind
    if kind is None:
        raise TypeError(f"{model.__name__} declares no job_kind; it cannot be swept.")
    now = now or timezone.now()
    hard_limit_seconds = kind.hard_limit_seconds
    hard = timedelta(seconds=hard_limit_seconds)
    failed = 0
    stuck = model._default_manager.filter(
        status=JobStatus.RUNNING, started_at__lt=now - hard - RUNNING_GRACE
    ).values_list("pk", flat=True)
    for pk in stuck:
        with transaction.atomic():
            job = model._default_manager.select_for_update().get(pk=pk)
            if job.status != JobStatus.RUNNING:
                continue
            job.mark_failed(
                f"No result within the {hard_limit_seconds} s time limit: the worker stopped "
                "or timed out."
            )
            failed += 1
    requeued = 0
    for job in model._default_manager.filter(
        status=JobStatus.PENDING,
        created_at__lt=now - timedelta(seconds=settings.CXR_PENDING_REQUEUE_SECONDS),
    ):
        with transaction.atomic():
            enqueue_job(job)
        requeued += 1
    if failed or requeued:
        log.warning(
            "sweep %s: %d stuck job(s) failed, %d requeued", model.__name__, failed, requeued
        )
    return {"failed": failed, "requeued": requeued}


def sweep_all(*, now: datetime | None = None) -> dict[str, dict[str, int]]:
    """Sweep every registered job kind; the result is keyed by model label."""
    now = now or timezone.now()
    return {label: sweep_stuck(model, now=now) for label, model in registered_jobs().items()}


@platform_task(queue="default", retry_for=(OperationalError, InterfaceError))
def sweep_stuck_jobs(self) -> dict[str, dict[str, int]]:
    """Celery beat, every ``CXR_STUCK_SWEEP_SECONDS``: the one sweeper of every job kind."""
    return sweep_all()

"""Jobs as state machines: pending -> running -> done | failed, how they run, and their
one registry.

Every job kind (Prediction, Segmentation, Explanation, Inspection, TrainingRun,
SampleGrid, and every new one) subclasses the abstract ``Job``: the same timestamps,
error field and one path per transition. A concrete subclass declares
``job_kind = JobKind(runner=..., queue=...)``: its :class:`JobRunner` (worker code,
named by its dotted path so a model never imports it) and its queue, which sets its
time limits. That declaration is the registration. The one Celery task ``run_job``
runs any kind, keyed by the model's label and the job's primary key, on the kind's
queue with the kind's limits; ``enqueue_job`` queues any job; the one beat task
``sweep_stuck_jobs`` sweeps every kind; ``retry_job`` retries any failed job. A new
kind is its model, its registration and a ``compute`` method (grand-challenge
``ComponentJob`` and its generic tasks keyed by app label and model name).
A concrete Job without a ``job_kind`` fails the system checks (``jobs.E001``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.core import checks
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    models,
    transaction,
)
from django.db.models.functions import Coalesce
from django.db.models.signals import class_prepared
from django.utils import timezone
from django.utils.module_loading import import_string

from cxrplatform.celery import QUEUES, app, platform_task, time_limits
from cxrplatform.errors import Refused
from cxrplatform.files import StoredFiles, files_removed_on_error, store_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobKind:
    """What a concrete ``Job`` declares so the platform can run, requeue and sweep it.

    ``runner`` is the dotted path of the kind's :class:`JobRunner` subclass, imported
    on a job's first run (worker code: it may import ``ml`` and TensorFlow lazily).
    ``queue`` sets where ``run_job`` sends the kind's jobs and their limits: the hard
    time limit is the queue's (``settings.CXR_TASK_HARD_LIMITS``; soft = 0.9 x hard),
    and the sweeper fails a job still ``running`` past it plus ``RUNNING_GRACE``.
    ``max_retries``: how often a database outage during a run is retried, with
    exponential backoff.
    """

    runner: str
    queue: str
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.queue not in QUEUES:
            raise ValueError(f"Unknown queue {self.queue!r}; expected one of {QUEUES}.")

    @property
    def hard_limit_seconds(self) -> int:
        return settings.CXR_TASK_HARD_LIMITS[self.queue]

    def runner_class(self) -> type[JobRunner[Any]]:
        runner = import_string(self.runner)
        if not (isinstance(runner, type) and issubclass(runner, JobRunner)):
            raise TypeError(f"{self.runner} is not a JobRunner.")
        return runner


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
    # Runs started, ever (an explicit retry adds to it).
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When its message was last sent (enqueue_job): the sweeper re-sends only a job
    # whose message has had CXR_PENDING_REQUEUE_SECONDS to reach a worker.
    queued_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Sends by the sweeper and claims since it was last queued by a person (created or
    # retried); bounded by CXR_JOB_MAX_ATTEMPTS, so a lost or lethal message does not
    # loop for ever.
    deliveries = models.PositiveIntegerField(default=0, editable=False)
    # Set by each claim: only the run holding the current claim stores a result.
    claim_token = models.UUIDField(null=True, blank=True, editable=False)

    class Meta:
        abstract = True

    @property
    def is_finished(self) -> bool:
        return self.status in {JobStatus.DONE, JobStatus.FAILED}

    @property
    def title(self) -> str:
        """What the job is called on a page ("Classification queued again")."""
        return str(self._meta.verbose_name).capitalize()

    def mark_running(self) -> None:
        """pending (or running, a redelivery) -> running, under a new claim: a run that
        claimed the job before stores nothing (:class:`JobRunner`)."""
        self.status = JobStatus.RUNNING
        self.started_at = timezone.now()
        self.attempts += 1
        self.deliveries += 1
        self.claim_token = uuid.uuid4()
        self.error = ""
        self.save(
            update_fields=["status", "started_at", "attempts", "deliveries", "claim_token", "error"]
        )
        pause = settings.CXR_TEST_PAUSE_AFTER_RUNNING_SECONDS
        if pause:
            # Test-only (off by default): keep the job observably `running` for a
            # while after the status commits, so a fault test can kill the worker
            # inside the task. Runs after commit, so no lock is held meanwhile.
            transaction.on_commit(lambda: time.sleep(pause))

    def mark_done(self, **results: object) -> None:
        """running -> done, with the result's fields (``JobResult.fields`` and the names
        of its stored files), in one save."""
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
        self.deliveries = 0  # a person asked again: a fresh allowance of attempts
        self.save(update_fields=["status", "started_at", "finished_at", "deliveries"])

    def retry_refusal(self) -> str | None:
        """Why this failed job may not be retried although it failed (None: it may).
        A kind with one live job per subject refuses when another one is live."""
        return None

    def retry_details(self) -> dict[str, object]:
        """What the retry's audit event records of the job beyond its status."""
        return {}


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


def job_model(label: str) -> type[Job]:
    """The registered job model of a label ("cases.prediction")."""
    try:
        return _REGISTRY[label]
    except KeyError:
        raise LookupError(f"No job kind is registered as {label!r}.") from None


def _kind(model: type[Job]) -> JobKind:
    kind = model.job_kind
    if kind is None:
        raise TypeError(f"{model.__name__} declares no job_kind; it cannot be run.")
    return kind


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
            hint="Add job_kind = JobKind(runner=..., queue=...) to the model.",
            obj=model,
            id="jobs.E001",
        )
        for model in candidates
        if issubclass(model, Job) and not model._meta.proxy and model.job_kind is None
    ]


_discovery_lock = threading.Lock()


def registered_task(name: str) -> Any:
    """The Celery task registered as ``name``.

    Every app's ``tasks`` module is imported when Django starts
    (:class:`cxrplatform.apps.PlatformConfig`), in web processes too, so a lookup
    never discovers modules while other threads look up. A name still missing is
    looked for once more under a lock: discovery run by several threads at once
    returned before the modules were registered. The task carries its own queue
    (routing) and options.
    """
    from cxrplatform.celery import import_task_modules

    if name not in app.tasks:
        with _discovery_lock:
            if name not in app.tasks:
                import_task_modules()
    try:
        return app.tasks[name]
    except KeyError:
        raise LookupError(f"No Celery task is registered as {name!r}.") from None


def enqueue_job(job: Job, *, now: datetime | None = None) -> None:
    """Queue ``run_job`` for ``job`` once the transaction commits, and record when
    (``queued_at``: ``now``, the sweeper's clock, or the present).

    If the broker cannot be reached at that moment (Redis restarting), the data is
    already committed and must stay so: the error is logged, not raised into the
    request that stored the upload, and the job stays ``pending`` until the beat
    sweeper (``sweep_stuck_jobs``) queues it again.
    """
    label = job._meta.label_lower
    _kind(type(job))  # a kind that cannot be run fails here, not after the commit
    pk = job.pk
    # The sweeper measures from here whether the message had its time to reach a worker.
    job.queued_at = now or timezone.now()
    type(job)._default_manager.filter(pk=pk).update(queued_at=job.queued_at)

    def send() -> None:
        try:
            run_job.apply_async(kwargs={"job": label, "pk": pk})
        except Exception:
            log.warning(
                "could not queue %s %s (broker unreachable?); the sweeper will queue it again",
                label,
                pk,
                exc_info=True,
            )

    transaction.on_commit(send)


GIVEN_UP = "Given up after"  # how a job failed for too many attempts starts its error


def claim_job(model: type[J], pk: int, *, related: tuple[str, ...] = ()) -> J | None:
    """Lock a job row and mark it running under a new claim, or say why there is
    nothing to do.

    Returns ``None`` when the row is gone, the finished job itself when it is
    already done or failed (a redelivered message does nothing), and otherwise
    the job marked ``running`` with a new ``claim_token``. A job left ``running``
    by a killed worker is claimed again, and the earlier claim is lost: should
    that run still be alive, it stores nothing (:class:`JobRunner`). A job that
    was claimed or re-sent ``CXR_JOB_MAX_ATTEMPTS`` times and is delivered again
    while ``running`` (each run ended without a result: a message that kills its
    worker) is failed instead, with the reason. Only the job's own row is locked
    (``of=("self",)``): PostgreSQL refuses ``FOR UPDATE`` across nullable outer
    joins.
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
        limit = settings.CXR_JOB_MAX_ATTEMPTS
        if job.status == JobStatus.RUNNING and job.deliveries >= limit:
            job.mark_failed(
                f"{GIVEN_UP} {job.deliveries} attempts: every run ended without a result "
                "(its worker was lost or killed), so it is not run again. Retry it once "
                "the cause is found."
            )
            log.error(
                "%s %s given up after %d attempts (CXR_JOB_MAX_ATTEMPTS=%d)",
                model.__name__,
                pk,
                job.deliveries,
                limit,
            )
            return job
        job.mark_running()
    return job


class ClaimLostError(Exception):
    """This run's claim was taken over by a later one (a second delivery of the job's
    message): the later run is the job's, this one stores nothing."""


def hold_claim(job: Job) -> None:
    """Lock ``job``'s row until the transaction ends and check that this run's claim
    (``job.claim_token``, as it claimed it) is still the current one; else raise
    :class:`ClaimLostError`. Call it inside ``transaction.atomic()`` before writing a result:
    a new claim needs the same lock, so none can come between the check and the commit.
    """
    current = (
        type(job)
        ._default_manager.select_for_update()
        .filter(pk=job.pk)
        .values_list("status", "claim_token")
        .first()
    )
    if current is None:
        raise ClaimLostError("its row was deleted meanwhile")
    status, token = current
    if status != JobStatus.RUNNING or token != job.claim_token:
        raise ClaimLostError(f"another delivery claimed it since (it is now {status})")


def _fail_if_claimed(job: Job, error: str) -> None:
    """Record ``error`` on the job unless this run lost its claim (the run that holds it
    writes the outcome)."""
    with transaction.atomic():
        try:
            hold_claim(job)
        except ClaimLostError as lost:
            log.warning(
                "%s %s failed after losing its claim (%s); its error is not recorded: %s",
                type(job).__name__,
                job.pk,
                lost,
                error,
            )
            return
        job.mark_failed(error)


@contextmanager
def failure_recorded(job: Job, *, what: str) -> Iterator[None]:
    """Write any failure of the block on the job row, so no job is lost or stuck.

    Database errors propagate instead: the row cannot be written then, and the
    house task decorator retries them; so does :class:`ClaimLostError`. A soft time
    limit becomes a failure with a plain message; anything else is logged with
    its traceback. A run that lost its claim records no failure.
    """
    try:
        yield
    except (DatabaseError, ClaimLostError):
        raise
    except SoftTimeLimitExceeded:
        _fail_if_claimed(job, f"{what} exceeded its time limit.")
    except Exception as exc:
        log.exception("%s %s failed", what, job.pk)
        _fail_if_claimed(job, f"{type(exc).__name__}: {exc}")


@dataclass
class JobResult:
    """What a kind's ``compute`` found: the fields to set on the job when it is done, and
    the files to store with it (a FileField's name -> (file name, content); the name
    it is stored under is set on that field)."""

    fields: dict[str, object] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class JobRunner(Generic[J]):
    """How a job runs: the one shape every kind shares; a kind writes ``compute``.

    :meth:`run` claims the row (a finished job is left alone, so a redelivered message
    does nothing; a job left ``running`` by a killed worker runs again), calls
    ``compute`` (the slow part, outside any transaction), then in one transaction
    checks that its claim is still the current one (:func:`hold_claim`: a second
    delivery may have claimed the job meanwhile; the run that lost stores nothing,
    deletes what it wrote and says so in the log), stores the result's files
    (:func:`cxrplatform.files.store_file`), runs ``store``, marks the job done with
    the result's fields and runs ``on_done``. Any failure but a database outage is
    written on the row (:func:`failure_recorded`) and every file written is deleted
    (:func:`files_removed_on_error`): no half-written result is left. ``after_done``
    runs once the result is committed. A runner is made for one job, so ``compute``
    may keep on ``self`` what the later hooks need.
    """

    #: The subject of its failure messages ("Classification exceeded its time limit.").
    what: ClassVar[str] = "The job"
    #: Relations read with the claimed row (``select_related``).
    related: ClassVar[tuple[str, ...]] = ()

    def compute(self, job: J) -> JobResult:
        raise NotImplementedError

    def store(self, job: J, stored: StoredFiles) -> dict[str, object]:
        """Writes beyond the job's own file fields (rows of their own, files whose failure
        must not fail the job), before ``mark_done``; returns more fields to set.
        Record every file written in ``stored``."""
        return {}

    def on_done(self, job: J) -> None:
        """In the transaction that marks the job done: what must commit with the result
        or not at all (queueing the next job, an audit event)."""

    def after_done(self, job: J) -> None:
        """Once the result is committed (notifications, caches, automatic promotion). A
        failure here is logged: it cannot undo the result."""

    def run(self, model: type[J], pk: int) -> J | None:
        job = claim_job(model, pk, related=self.related)
        if job is None or job.is_finished:
            return job
        try:
            self._finish(job)
        except ClaimLostError as lost:
            log.warning(
                "%s %s: this run lost its claim (%s); its result is discarded and the "
                "files it wrote deleted",
                model.__name__,
                pk,
                lost,
            )
            return model._default_manager.filter(pk=pk).first()
        if job.status == JobStatus.DONE:
            try:
                self.after_done(job)
            except DatabaseError:
                raise
            except Exception:
                log.exception("%s %s is done, but what follows it failed", model.__name__, pk)
        return job

    def _finish(self, job: J) -> None:
        with failure_recorded(job, what=self.what):
            result = self.compute(job)
            with files_removed_on_error() as stored, transaction.atomic():
                hold_claim(job)
                fields = dict(result.fields)
                for name, (filename, content) in result.files.items():
                    fields[name] = store_file(job, name, filename, content, stored)
                fields.update(self.store(job, stored))
                job.mark_done(**fields)
                self.on_done(job)


def run_job_now(model: type[J], pk: int) -> J | None:
    """Run one job of ``model`` in this process: what ``run_job`` does on a worker (tests
    call it directly). Returns the job as it ended, or None when its row is gone."""
    runner: JobRunner[J] = _kind(model).runner_class()()
    return runner.run(model, pk)


RUN_JOB = "cxrplatform.jobs.run_job"


def _message_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Each ``run_job`` message goes to its kind's queue with that queue's time limits,
    and workers and monitoring show it as ``run_job:<label>``."""
    label = kwargs["job"]
    kind = _kind(job_model(label))
    return {"queue": kind.queue, **time_limits(kind.queue), "shadow": f"{RUN_JOB}:{label}"}


def _run(task: Any, label: str, pk: int) -> None:
    model = job_model(label)
    try:
        run_job_now(model, pk)
    except (OperationalError, InterfaceError) as exc:
        # The database went away (restarting): try again later, with the backoff of
        # every house task and the kind's own number of retries.
        countdown = get_exponential_backoff_interval(
            factor=1, retries=task.request.retries, maximum=120, full_jitter=True
        )
        raise task.retry(
            exc=exc, countdown=countdown, max_retries=_kind(model).max_retries
        ) from exc


@platform_task(queue="default", per_message=_message_options)
def run_job(self, *, job: str, pk: int) -> None:
    """Run one job of any registered kind: ``job`` is its model's label
    ("cases.prediction"), ``pk`` its primary key. Sent to the kind's queue with its
    limits (``_message_options``); thin and idempotent like every task."""
    _run(self, job, pk)


# The task name and keyword each kind was queued under before run_job ran every kind,
# with its queue. Messages already on the broker when a deployment upgrades (waiting,
# or redelivered after their worker was lost) still carry these names: the aliases run
# them as run_job would. Remove them one release after run_job.
LEGACY_TASKS: dict[str, tuple[str, str, str]] = {
    "apps.cases.tasks.classify_image": ("cases.prediction", "prediction_id", "inference"),
    "apps.cases.tasks.segment_slice": ("cases.segmentation", "segmentation_id", "segmentation"),
    "apps.explain.tasks.explain_image": ("explain.explanation", "explanation_id", "explain"),
    "apps.explain.tasks.inspect_model": ("explain.inspection", "inspection_id", "explain"),
    "apps.generator.tasks.make_sample_grid": ("generator.samplegrid", "grid_id", "explain"),
    "apps.models.tasks.train_model": ("registry.trainingrun", "run_id", "training"),
}


def _legacy_alias(name: str, label: str, keyword: str, queue: str) -> Any:
    def alias(self: Any, **kwargs: Any) -> None:
        _run(self, label, kwargs[keyword])

    alias.__doc__ = f"Messages queued as {name} before run_job: run as run_job({label!r})."
    return platform_task(queue=queue, name=name)(alias)


for _name, (_label, _keyword, _queue) in LEGACY_TASKS.items():
    _legacy_alias(_name, _label, _keyword, _queue)


class RetryRefused(Refused):
    pass


@transaction.atomic
def retry_job(job: J, *, actor: Any = None) -> J:
    """Queue a failed job again: the same row, so the page that shows it follows it.

    The one retry path of every kind. Only a failed job can be retried (a pending or
    running one is on its way, a done one has its answer), and not when the kind
    refuses (``Job.retry_refusal``: the same map asked for again since). Audited as
    ``<kind>.retry`` with the error it replaces.
    """
    from apps.accounts.models import record

    model = type(job)
    noun = str(model._meta.verbose_name)
    locked = model._default_manager.select_for_update().get(pk=job.pk)
    if locked.status != JobStatus.FAILED:
        raise RetryRefused(
            f"Only a failed {noun} can be retried; this one is "
            f"{locked.get_status_display().lower()}."
        )
    refusal = locked.retry_refusal()
    if refusal:
        raise RetryRefused(refusal)
    error = locked.error
    try:
        with transaction.atomic():
            locked.reset_for_retry()
    except IntegrityError:  # a concurrent request made a live one meanwhile
        raise RetryRefused(
            locked.retry_refusal() or f"This {noun} was asked for again already."
        ) from None
    record(
        actor=actor,
        action=f"{model._meta.model_name}.retry",
        target=locked,
        before={"status": "failed", "error": error[:500]},
        after={"status": "pending", **locked.retry_details()},
    )
    enqueue_job(locked)
    log.info("%s %s queued again by %s", noun, locked.pk, actor)
    return locked


# A job still pending CXR_PENDING_REQUEUE_SECONDS after its message was sent was
# probably lost (broker down when it was queued, or restarted without persistence);
# the sweeper sends it again. Running jobs get their hard time limit plus this
# grace before they count as stuck.
RUNNING_GRACE = timedelta(seconds=60)


def sweep_stuck(model: type[Job], *, now: datetime | None = None) -> dict[str, int]:
    """Fail jobs whose worker vanished; send again jobs that never reached a worker.

    A pending job is sent again only when its message is stale: sent (``queued_at``;
    ``created_at`` for a job queued before that was recorded) at least
    ``CXR_PENDING_REQUEUE_SECONDS`` ago, so each sweep does not add one more message
    for the same job. Each re-send counts against ``CXR_JOB_MAX_ATTEMPTS``; a job sent
    that often that never reached a worker is failed with the reason (counted in
    ``failed``).
    """
    kind = _kind(model)
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
    stale_before = now - timedelta(seconds=settings.CXR_PENDING_REQUEUE_SECONDS)
    lost = (
        model._default_manager.alias(sent_at=Coalesce("queued_at", "created_at"))
        .filter(status=JobStatus.PENDING, sent_at__lt=stale_before)
        .values_list("pk", flat=True)
    )
    for pk in lost:
        with transaction.atomic():
            pending = model._default_manager.select_for_update().filter(pk=pk).first()
            if (
                pending is None
                or pending.status != JobStatus.PENDING
                or (pending.queued_at or pending.created_at) >= stale_before
            ):
                continue  # claimed, or sent again, since the query
            if pending.deliveries >= settings.CXR_JOB_MAX_ATTEMPTS:
                pending.mark_failed(
                    f"{GIVEN_UP} {pending.deliveries} attempts: queued again "
                    f"{pending.deliveries} times and no worker took it (is a worker "
                    f"consuming the {kind.queue} queue?). Retry it once the cause is found."
                )
                log.error("%s %s given up: never reached a worker", model.__name__, pk)
                failed += 1
                continue
            pending.deliveries += 1
            pending.save(update_fields=["deliveries"])
            enqueue_job(pending, now=now)
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

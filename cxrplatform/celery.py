"""Celery application, queues and the house task decorator.

Queues are split by the kind of work so each can be scaled on its own
machines: ``inference`` (fast, latency-sensitive), ``segmentation`` (CT slices, the
same kind of work with another model), ``explain`` (heavier), ``training`` (hours)
and ``default`` (housekeeping).

Job kinds, the one task that runs every kind of job (``run_job``), the one
stuck-job sweeper and enqueueing live in ``cxrplatform.jobs``; the worker's
model warm-up is wired by the model registry's app config (``apps.models.apps``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from django.conf import settings
from kombu import Exchange, Queue

from celery import Celery, Task
from cxrplatform import logcontext

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cxrplatform.settings")

QUEUES = ("inference", "segmentation", "explain", "training", "default")

app = Celery("cxrplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Each queue has its own routing key on one direct exchange, so a message goes
# to exactly one queue (Queue(name) alone would bind every queue to the same
# default routing key and deliver each task to all of them).
EXCHANGE = Exchange("cxr", type="direct")
app.conf.task_queues = tuple(Queue(name, EXCHANGE, routing_key=name) for name in QUEUES)
# `update`, not attribute assignment: celery-types declares the first two as read-only
# properties, though they are plain configuration keys like the third.
app.conf.update(
    task_default_exchange=EXCHANGE.name,
    task_default_routing_key="default",
    task_default_queue="default",
)
# A task's queue is part of its declaration (`platform_task`). Routing looks
# the queue up at send time: a routes *dict* would be copied into Celery's
# router when the first task is sent, and tasks imported after that would
# silently go to the default queue.
_QUEUE_OF: dict[str, str] = {}


def _route(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> dict[str, str] | None:
    queue = _QUEUE_OF.get(name)
    return {"queue": queue} if queue else None


app.conf.task_routes = (_route,)
# A worker imports every app's `tasks` module when it starts (Celery's discovery); every
# process, web included, also imports them once Django is set up (import_task_modules,
# called by cxrplatform.apps.PlatformConfig.ready), before any request or thread.
app.autodiscover_tasks()
# Request id, user id, task id and job id on every log line, web to worker
# (cxrplatform.logcontext; CXR_LOG_FORMAT=json for JSON lines).
logcontext.connect_celery_signals()


def import_task_modules() -> None:
    """Import every installed app's ``tasks`` module, so each of its tasks is registered.

    Done once at start-up, in one thread, where the web process used to discover them
    on its first lookup: several request threads discovering at once got a
    ``LookupError`` for a task that exists.
    """
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("tasks")


def time_limits(queue: str) -> dict[str, int]:
    """The hard time limit of a queue's tasks (settings) and the soft one, 0.9 x hard, so a
    task can record its failure before the hard kill."""
    hard = settings.CXR_TASK_HARD_LIMITS[queue]
    return {"time_limit": hard, "soft_time_limit": int(hard * 0.9)}


class PlatformTask(Task):
    """The house task class. A task that serves several kinds of work (``run_job``) sets
    ``per_message``: the queue, time limits and shown name of each message, from its
    keyword arguments, filled in whenever it is sent (queued, requeued by the sweeper,
    retried) unless the sender gave them."""

    per_message: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:  # type: ignore[override]
        if self.per_message is not None:
            for key, value in self.per_message(kwargs or {}).items():
                if options.get(key) is None:
                    options[key] = value
        return super().apply_async(args, kwargs, **options)


def platform_task(
    *,
    queue: str,
    max_retries: int = 3,
    retry_for: tuple[type[BaseException], ...] = (),
    name: str | None = None,
    per_message: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Callable[[Callable[..., Any]], Any]:
    """The one way this project declares a Celery task.

    * ``acks_late`` + ``reject_on_worker_lost``: a worker killed mid-task
      (OOM, SIGKILL, deploy) leaves the message on the broker, so another
      worker runs it again. Tasks must therefore be idempotent.
    * hard time limit per queue from settings; the soft limit is 0.9 x hard so
      the task can record its failure before the hard kill.
    * retries with exponential backoff for the transient errors named in
      ``retry_for`` (for example a database that restarted).
    * ``name``: the registered name, when it is not the function's dotted path.
    * ``per_message``: queue and limits per message (:class:`PlatformTask`); ``queue``
      is then only where a message that names no kind would go.
    """
    if queue not in QUEUES:
        raise ValueError(f"Unknown queue {queue!r}; expected one of {QUEUES}.")
    limits = time_limits(queue)

    def decorator(func: Callable[..., Any]) -> Any:
        task_name = name or f"{func.__module__}.{func.__name__}"
        _QUEUE_OF[task_name] = queue
        return app.task(
            base=PlatformTask,
            per_message=staticmethod(per_message) if per_message else None,
            bind=True,
            name=task_name,
            acks_late=True,
            reject_on_worker_lost=True,
            time_limit=limits["time_limit"],
            soft_time_limit=limits["soft_time_limit"],
            max_retries=max_retries,
            autoretry_for=retry_for,
            retry_backoff=True,
            retry_backoff_max=120,
            retry_jitter=True,
        )(func)

    return decorator

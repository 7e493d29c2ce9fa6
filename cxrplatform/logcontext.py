"""Who and what a log line is about: request id, user id, Celery task id, job id.

Every log record gets ``request_id``, ``user_id``, ``task_id`` and ``job_id`` attributes
(:class:`ContextFilter`; ``""`` where there is none), and with ``CXR_LOG_FORMAT=json``
each line is one JSON object carrying them (python-json-logger). Only identifiers: a
user's numeric id, never a username, a patient reference or a file name.

* Web: :class:`RequestIdMiddleware` takes the request id from the ``X-Request-ID`` header
  (a proxy's, when it is 1-64 characters of ``[A-Za-z0-9._-]``) or makes one, and
  answers with it in ``X-Request-ID``. The user id is read once authentication has run
  (session or API token).
* Web to worker: when a task is sent, the current request id and user id travel in
  the message's headers (``before_task_publish``); the worker sets them for the task's
  run (``task_prerun``), with the task id and the job id (``prediction:12``: the job
  kind's model and the primary key the task was given). A task sent by a task (the
  sweeper requeueing a job) carries its sender's request id on.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from django.core.signals import request_finished
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.functional import SimpleLazyObject, empty

log = logging.getLogger("cxrplatform.tasks")

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Message headers of a task (Celery protocol 2 carries custom headers to the worker).
REQUEST_HEADER = "cxr_request_id"
USER_HEADER = "cxr_user_id"

request_id_var: ContextVar[str] = ContextVar("cxr_request_id", default="")
user_id_var: ContextVar[str] = ContextVar("cxr_user_id", default="")
task_id_var: ContextVar[str] = ContextVar("cxr_task_id", default="")
job_id_var: ContextVar[str] = ContextVar("cxr_job_id", default="")
_request_var: ContextVar[HttpRequest | None] = ContextVar("cxr_request", default=None)

FIELDS = ("request_id", "user_id", "task_id", "job_id")


def _user_id_of(request: HttpRequest | None) -> str:
    """The authenticated user's id, without triggering authentication from a log call."""
    if request is None:
        return ""
    user = request.__dict__.get("user")
    if user is None or (isinstance(user, SimpleLazyObject) and user._wrapped is empty):
        return ""
    return str(user.pk) if getattr(user, "is_authenticated", False) else ""


def current_user_id() -> str:
    return user_id_var.get() or _user_id_of(_request_var.get())


class ContextFilter(logging.Filter):
    """Adds the context fields to every record (the handlers' filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.user_id = current_user_id()
        record.task_id = task_id_var.get()
        record.job_id = job_id_var.get()
        return True


class RequestIdMiddleware:
    """Sets the request id (and the request, for the user id) for the request's logs."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _VALID_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        # Set until the response is closed (request_finished): Django logs a response's
        # errors ("Not Found: ...") after the middleware chain has returned.
        request_id_var.set(request_id)
        _request_var.set(request)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


def _request_finished(**_kwargs: Any) -> None:
    request_id_var.set("")
    _request_var.set(None)


request_finished.connect(_request_finished, dispatch_uid="cxr-log-context-request-finished")


def _job_id(kwargs: dict[str, Any] | None) -> str:
    """``prediction:12`` for a ``run_job`` message (``job="cases.prediction", pk=12``) or one
    queued under a kind's task name from before ``run_job`` (``prediction_id=12``)."""
    if not kwargs:
        return ""
    if "job" in kwargs and "pk" in kwargs:
        return f"{str(kwargs['job']).split('.', 1)[-1]}:{kwargs['pk']}"
    from cxrplatform.jobs import LEGACY_TASKS

    for label, keyword, _queue in LEGACY_TASKS.values():
        if keyword in kwargs:
            return f"{label.split('.', 1)[-1]}:{kwargs[keyword]}"
    return ""


def add_context_headers(headers: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    """``before_task_publish``: the sender's request id and user id go with the message."""
    if headers is None:
        return
    request_id = request_id_var.get()
    if request_id:
        headers.setdefault(REQUEST_HEADER, request_id)
    user_id = current_user_id()
    if user_id:
        headers.setdefault(USER_HEADER, user_id)


_tokens: dict[str, tuple[Any, ...]] = {}
_started: dict[str, float] = {}


def _header(task: Any, name: str) -> str:
    value = getattr(task.request, name, None)
    if value is None and isinstance(getattr(task.request, "headers", None), dict):
        value = task.request.headers.get(name)
    return str(value) if value else ""


def task_started(
    task_id: str | None = None, task: Any = None, kwargs: dict | None = None, **_kw: Any
) -> None:
    """``task_prerun``: the task's context for its logs, and a "task started" line."""
    if task is None or task_id is None:
        return
    _tokens[task_id] = (
        request_id_var.set(_header(task, REQUEST_HEADER)),
        user_id_var.set(_header(task, USER_HEADER)),
        task_id_var.set(task_id),
        job_id_var.set(_job_id(kwargs)),
    )
    _started[task_id] = time.perf_counter()
    log.info("task started: %s", _shown_name(task))


def _shown_name(task: Any) -> str:
    """The name a worker shows a task run under: the message's shadow name when it has one
    (``cxrplatform.jobs.run_job:cases.prediction``), else the task's."""
    return str(getattr(task.request, "shadow", None) or task.name)


def task_finished(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_kw: Any
) -> None:
    """``task_postrun``: a "task finished" line with its state and seconds; context reset."""
    if task_id is None:
        return
    started = _started.pop(task_id, None)
    seconds = time.perf_counter() - started if started is not None else float("nan")
    log.info(
        "task finished: %s state=%s seconds=%.3f",
        _shown_name(task) if task is not None else "?",
        state,
        seconds,
        extra={"task_state": state, "task_seconds": round(seconds, 3)},
    )
    tokens = _tokens.pop(task_id, None)
    if tokens is not None:
        for var, token in zip(
            (request_id_var, user_id_var, task_id_var, job_id_var), tokens, strict=True
        ):
            var.reset(token)


# The JSON line: these fields, renamed; anything passed as ``extra`` is added too.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s " + " ".join(
    f"%({name})s" for name in FIELDS
)
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger"}


def json_formatter() -> logging.Formatter:
    """The ``CXR_LOG_FORMAT=json`` formatter (LOGGING's ``()`` factory)."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAMES, timestamp=False)


def celery_logger_ready(logger: logging.Logger | None = None, **_kwargs: Any) -> None:
    """``after_setup_logger`` / ``after_setup_task_logger``: the worker's handlers (Celery
    sets up its own) get the context fields, and the JSON format when it is chosen."""
    from django.conf import settings

    if logger is None:
        return
    for handler in logger.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if settings.CXR_LOG_FORMAT == "json":
            handler.setFormatter(json_formatter())


def connect_celery_signals() -> None:
    from celery.signals import (
        after_setup_logger,
        after_setup_task_logger,
        before_task_publish,
        task_postrun,
        task_prerun,
    )

    before_task_publish.connect(add_context_headers, dispatch_uid="cxr-log-context-publish")
    task_prerun.connect(task_started, dispatch_uid="cxr-log-context-prerun")
    task_postrun.connect(task_finished, dispatch_uid="cxr-log-context-postrun")
    after_setup_logger.connect(celery_logger_ready, dispatch_uid="cxr-log-context-logger")
    after_setup_task_logger.connect(celery_logger_ready, dispatch_uid="cxr-log-context-task")

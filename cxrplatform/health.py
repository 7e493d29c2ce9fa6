"""Health checks for load balancers, orchestrators and docker-compose.

``/healthz``: the process is alive and answers (no dependency is touched), for a
liveness probe: a failure means "restart me".

``/readyz``: the process can do its work, for a readiness probe and compose's
``healthcheck``. Checks, in this order, each named in the JSON body:

* ``database``: a ``SELECT 1`` on the default database;
* ``migrations``: no migration left to apply (a web process on a newer release than
  its schema must not take traffic);
* ``broker``: a connection to the Celery broker (Redis, or the filesystem folders);
* ``storage``: a file written to, read back from and deleted from the default storage
  (local ``MEDIA_ROOT`` or the S3 bucket);
* ``model``: a production classifier is registered and its artifact can be read and
  has the sha256 the registry recorded (what the workers check before they load it;
  the web process never imports TensorFlow). A registered production CT segmenter is
  checked the same way; none registered is not a failure.

The answer is 200 ``{"status": "ok", ...}`` or 503 ``{"status": "fail", "failed": [...]}``;
the checks' detail (``failed``, ``checks``) goes only to a client the metrics endpoint
would answer (``CXR_METRICS_ALLOWED_NETWORKS`` or ``CXR_METRICS_TOKEN``), everyone else
gets ``{"status": ...}`` alone.
Both are answered by :class:`HealthCheckMiddleware`, first in the chain: before
``ALLOWED_HOSTS`` validation (a probe says ``Host: 127.0.0.1:8000`` whatever the
deployment's host name), the HTTPS redirect, sessions and the database-backed
middleware. Passed checks of slow things (the migration plan, the storage round trip,
the model's hash) are
remembered for ``CXR_READYZ_CACHE_SECONDS``; failures are never remembered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
CHECKS = ("database", "migrations", "broker", "storage", "model")


class NotReady(Exception):  # noqa: N818 - reads as an outcome
    """A check's failure, with a message an operator can act on."""


@dataclass
class _Remembered:
    """Passed checks of slow things, by key, with the time they passed."""

    passed: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            hit = self.passed.get(key)
        if hit is None or time.monotonic() - hit[0] > settings.CXR_READYZ_CACHE_SECONDS:
            return None
        return hit[1]

    def put(self, key: str, detail: dict[str, Any]) -> None:
        with self.lock:
            self.passed[key] = (time.monotonic(), detail)

    def clear(self) -> None:
        with self.lock:
            self.passed.clear()


_remembered = _Remembered()


def forget_passed_checks() -> None:
    """Tests: check everything again on the next request."""
    _remembered.clear()


def check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        if cursor.fetchone() != (1,):
            raise NotReady("SELECT 1 did not return 1")
    return {"vendor": connection.vendor}


def check_migrations() -> dict[str, Any]:
    from django.db.migrations.executor import MigrationExecutor

    key = f"migrations:{connection.alias}"
    remembered = _remembered.get(key)
    if remembered is not None:
        return remembered
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        names = [f"{migration.app_label}.{migration.name}" for migration, _ in plan[:5]]
        more = f" and {len(plan) - 5} more" if len(plan) > 5 else ""
        raise NotReady(f"{len(plan)} migration(s) not applied: {', '.join(names)}{more}")
    detail: dict[str, Any] = {"unapplied": 0}
    _remembered.put(key, detail)
    return detail


def check_broker() -> dict[str, Any]:
    from cxrplatform.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
        transport = conn.transport_cls
    return {"transport": str(transport)}


def check_storage() -> dict[str, Any]:
    """Write, read back and delete a file; a pass is remembered like the other slow
    checks, so a probe every few seconds does not write to the storage every time."""
    key = f"storage:{settings.STORAGES['default']['BACKEND']}:{settings.MEDIA_ROOT}"
    remembered = _remembered.get(key)
    if remembered is not None:
        return remembered
    payload = uuid.uuid4().hex.encode()
    name = default_storage.save(f"health/readyz-{uuid.uuid4().hex}.txt", ContentFile(payload))
    try:
        with default_storage.open(name, "rb") as fh:
            if fh.read() != payload:
                raise NotReady("a file written to the storage read back different")
    finally:
        default_storage.delete(name)
    detail = {"backend": settings.STORAGES["default"]["BACKEND"].rsplit(".", 1)[-1]}
    _remembered.put(key, detail)
    return detail


def _artifact_sha256(version: Any) -> str:
    digest = hashlib.sha256()
    with version.artifact.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_version(version: Any) -> dict[str, Any]:
    detail = {"version": version.pk, "name": version.name, "sha256": version.sha256[:12]}
    key = f"model:{version.pk}:{version.sha256}:{version.artifact.name}"
    if _remembered.get(key) is not None:
        return detail
    if not version.artifact.name:
        raise NotReady(f"model version {version.pk} has no artifact file")
    try:
        actual = _artifact_sha256(version)
    except FileNotFoundError:
        raise NotReady(
            f"the artifact of model version {version.pk} ({version.artifact.name}) is missing"
        ) from None
    if actual != version.sha256:
        raise NotReady(
            f"the artifact of model version {version.pk} has sha256 {actual[:12]}, the registry "
            f"says {version.sha256[:12]}: the file was replaced or damaged"
        )
    _remembered.put(key, detail)
    return detail


def check_model() -> dict[str, Any]:
    from apps.models.models import ModelVersion, Task

    production = ModelVersion.objects.production()
    if production is None:
        raise NotReady(
            "no production model is registered (manage.py register_model --bundled "
            "--if-no-production, or promote one in the registry)"
        )
    detail = {Task.CLASSIFICATION.value: _check_version(production)}
    for task in Task:
        if task == Task.CLASSIFICATION:
            continue
        version = ModelVersion.objects.production(task=task)
        if version is not None:
            detail[task.value] = _check_version(version)
    return detail


def check_dicom_listener() -> dict[str, Any]:
    """A C-ECHO to the DICOM listener (``CXR_DICOM_LISTENER_CHECK``, host:port)."""
    from apps.pacs.scp import echo

    host, _, port = settings.CXR_DICOM_LISTENER_CHECK.rpartition(":")
    title = settings.CXR_DICOM_AE_TITLE
    if not echo(host=host, port=int(port), called_ae=title, calling_ae=title):
        raise NotReady(f"the DICOM listener {title} at {host}:{port} did not answer a C-ECHO")
    return {"ae_title": title, "address": f"{host}:{port}"}


_CHECK_FUNCTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": check_database,
    "migrations": check_migrations,
    "broker": check_broker,
    "storage": check_storage,
    "model": check_model,
    "dicom": check_dicom_listener,
}
# Checks that need the database: skipped (and failed) when it is unreachable.
_NEEDS_DATABASE = {"migrations", "model"}


def _message(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, NotReady) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]


def readiness() -> tuple[bool, dict[str, Any]]:
    """Run every check; (ready, the JSON body)."""
    results: dict[str, dict[str, Any]] = {}
    # The DICOM listener is checked where one is configured (apps.pacs).
    extra = ("dicom",) if settings.CXR_DICOM_LISTENER_CHECK else ()
    for name in (*CHECKS, *extra):
        started = time.perf_counter()
        if name in _NEEDS_DATABASE and not results["database"]["ok"]:
            results[name] = {"ok": False, "error": "skipped: the database is unreachable"}
            continue
        try:
            detail = _CHECK_FUNCTIONS[name]()
        except Exception as exc:
            log.warning("readiness check %s failed: %s", name, _message(exc))
            results[name] = {"ok": False, "error": _message(exc)}
        else:
            results[name] = {"ok": True, **detail}
        results[name]["ms"] = round(1000 * (time.perf_counter() - started), 1)
    failed = [name for name, result in results.items() if not result["ok"]]
    body = {"status": "fail" if failed else "ok", "failed": failed, "checks": results}
    return not failed, body


def _json(body: dict[str, Any], status: int) -> HttpResponse:
    response = HttpResponse(
        json.dumps(body, sort_keys=True), content_type="application/json", status=status
    )
    response["Cache-Control"] = "no-store"
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    return _json({"status": "ok"}, 200)


def readyz(request: HttpRequest) -> HttpResponse:
    """Everyone (a probe names any host) gets the verdict alone; the checks' detail
    (vendors, model versions and hashes, error text) only a client /metrics would
    answer: an address in ``CXR_METRICS_ALLOWED_NETWORKS`` or the metrics token."""
    from cxrplatform.metrics import client_allowed

    ready, body = readiness()
    if not client_allowed(request):
        body = {"status": body["status"]}
    return _json(body, 200 if ready else 503)


class HealthCheckMiddleware:
    """Answers ``GET``/``HEAD`` ``/healthz``, ``/readyz`` and ``/metrics`` (which checks
    its own access, :mod:`cxrplatform.metrics`) before the rest of the chain: no host
    validation (probes and Prometheus name the container, not the site), no HTTPS
    redirect (they speak plain HTTP inside the deployment's network), no session."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.method in ("GET", "HEAD"):
            path = request.path_info.rstrip("/") or "/"
            if path == HEALTH_PATH:
                return healthz(request)
            if path == READY_PATH:
                return readyz(request)
            if path == METRICS_PATH:
                from cxrplatform.metrics import metrics_view

                return metrics_view(request)
        return self.get_response(request)

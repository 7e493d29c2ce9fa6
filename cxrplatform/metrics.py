"""Prometheus metrics: one endpoint, ``/metrics``, protected (docs/operations.md "Monitoring").

Two parts, one text answer:

* **Requests**, from django-prometheus's middleware: requests and responses by view,
  method and status, latency histograms by view (``django_http_*``). Each gunicorn
  process counts its own; with ``PROMETHEUS_MULTIPROC_DIR`` set (docker-compose does)
  the answer adds up every process's counts.
* **The platform**, read at scrape time from the database and the broker (so every web
  process answers the same, whichever worker machine ran the job): jobs by kind and
  status and their durations, jobs finished (and given up) in the last hour, queue
  lengths per queue, workers answering per queue, predictions per label and model
  version, the production model of each task. Names start with ``cxr_`` (listed in
  :data:`PLATFORM_METRICS`).

Access: a request from an address in ``CXR_METRICS_ALLOWED_NETWORKS`` (loopback by
default; the address the throttles see, so ``CXR_NUM_PROXIES`` applies), or one that
carries ``Authorization: Bearer <CXR_METRICS_TOKEN>``. Anything else gets 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the job duration histogram: inference takes well under a
# second, explanations seconds to minutes, training runs hours.
DURATION_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
FINISHED = ("done", "failed")

PLATFORM_METRICS = {
    "cxr_jobs": "gauge: jobs in the database by kind and status",
    "cxr_job_duration_seconds": "histogram: started -> finished of finished jobs, by kind "
    "and status (done, failed)",
    "cxr_jobs_finished_last_hour": "gauge: jobs finished in the last hour by kind and status",
    "cxr_jobs_given_up_last_hour": "gauge: jobs failed in the last hour for too many attempts "
    "(CXR_JOB_MAX_ATTEMPTS), by kind",
    "cxr_queue_length": "gauge: messages waiting on each Celery queue",
    "cxr_workers": "gauge: workers answering a control ping, by the queue they consume",
    "cxr_predictions": "gauge: finished predictions by label and model version",
    "cxr_production_model_info": "gauge (1): the production model version of each task",
    "cxr_site_drift": "gauge: the newest population stability index of each site and drift "
    "feature for the production classifier against its reference (above 0.25: drift)",
    "cxr_pacs_instances": "gauge: PACS instances and returned objects by outcome (received, "
    "refused, returned, pending, failed; apps.pacs)",
    "cxr_metrics_errors": "gauge: 1 when a part of this scrape could not be read",
}


def _job_kind_label(label: str) -> str:
    return label.split(".", 1)[-1]  # "cases.prediction" -> "prediction"


def _jobs() -> Iterator[Metric]:
    from cxrplatform.jobs import GIVEN_UP, JobStatus, registered_jobs

    counts = GaugeMetricFamily(
        "cxr_jobs", PLATFORM_METRICS["cxr_jobs"].split(": ", 1)[1], labels=["kind", "status"]
    )
    recent = GaugeMetricFamily(
        "cxr_jobs_finished_last_hour",
        PLATFORM_METRICS["cxr_jobs_finished_last_hour"].split(": ", 1)[1],
        labels=["kind", "status"],
    )
    given_up = GaugeMetricFamily(
        "cxr_jobs_given_up_last_hour",
        PLATFORM_METRICS["cxr_jobs_given_up_last_hour"].split(": ", 1)[1],
        labels=["kind"],
    )
    durations = HistogramMetricFamily(
        "cxr_job_duration_seconds",
        PLATFORM_METRICS["cxr_job_duration_seconds"].split(": ", 1)[1],
        labels=["kind", "status"],
    )
    hour_ago = timezone.now() - timedelta(hours=1)
    for label, model in registered_jobs().items():
        kind = _job_kind_label(label)
        rows = dict(
            model._default_manager.order_by()
            .values_list("status")
            .annotate(n=Count("pk"))
            .values_list("status", "n")
        )
        for status in JobStatus.values:
            counts.add_metric([kind, status], rows.get(status, 0))
        finished = (
            model._default_manager.order_by()
            .filter(status__in=FINISHED, finished_at__gte=hour_ago)
            .values_list("status")
            .annotate(n=Count("pk"))
            .values_list("status", "n")
        )
        recent_rows = dict(finished)
        for status in FINISHED:
            recent.add_metric([kind, status], recent_rows.get(status, 0))
        given_up.add_metric(
            [kind],
            model._default_manager.filter(
                status=JobStatus.FAILED, finished_at__gte=hour_ago, error__startswith=GIVEN_UP
            ).count(),
        )
        duration = ExpressionWrapper(F("finished_at") - F("started_at"), DurationField())
        buckets = {
            f"le_{i}": Count("pk", filter=Q(duration__lte=timedelta(seconds=bound)))
            for i, bound in enumerate(DURATION_BUCKETS)
        }
        stats = (
            model._default_manager.order_by()
            .filter(status__in=FINISHED, started_at__isnull=False, finished_at__isnull=False)
            .alias(duration=duration)
            .values("status")
            .annotate(total=Count("pk"), seconds=Sum("duration"), **buckets)
        )
        by_status: dict[str, dict[str, Any]] = {row["status"]: dict(row) for row in stats}
        for status in FINISHED:
            row = by_status.get(status)
            total = row["total"] if row else 0
            cumulative = [
                (str(float(bound)), row[f"le_{i}"] if row else 0)
                for i, bound in enumerate(DURATION_BUCKETS)
            ]
            seconds = row["seconds"] if row and row["seconds"] is not None else timedelta(0)
            durations.add_metric(
                [kind, status],
                buckets=[*cumulative, ("+Inf", total)],
                sum_value=seconds.total_seconds(),
            )
    yield counts
    yield recent
    yield given_up
    yield durations


def queue_lengths() -> dict[str, int]:
    """Messages waiting on each queue of the Celery app (every one in ``QUEUES``)."""
    from kombu.exceptions import ChannelError

    from cxrplatform.celery import QUEUES, app

    lengths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
        channel: Any = conn.default_channel
        for queue in QUEUES:
            if hasattr(channel, "_size"):
                # A virtual transport (Redis): its own count (LLEN over the priority lists, 0
                # for a list never created). Not a passive queue_declare: that asks EXISTS
                # first, which kombu (5.7) does not prefix with a global_keyprefix, so with
                # a prefix every queue read as never declared, i.e. empty.
                lengths[queue] = int(channel._size(queue))
                continue
            try:
                lengths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:  # never declared (no worker ever consumed it): empty
                lengths[queue] = 0
    return lengths


_workers_lock = threading.Lock()
_workers_cache: tuple[float, dict[str, int]] | None = None


def workers_by_queue() -> dict[str, int]:
    """Workers that answer a control ping within ``CXR_METRICS_INSPECT_TIMEOUT``, by the
    queues they consume (every queue of ``QUEUES``, 0 where none). Remembered for 10 s:
    every ping is a broadcast to every worker."""
    global _workers_cache
    from cxrplatform.celery import QUEUES, app

    with _workers_lock:
        if _workers_cache is not None and time.monotonic() - _workers_cache[0] < 10:
            return dict(_workers_cache[1])
        # A broker that does not answer fails the ping at once (one try), as the queue
        # lengths do, instead of after the publisher's retries (seconds): a scrape stays
        # well within Prometheus's timeout.
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
            replies = app.control.inspect(
                timeout=settings.CXR_METRICS_INSPECT_TIMEOUT, connection=conn
            ).active_queues()
        counts = dict.fromkeys(QUEUES, 0)
        for queues in (replies or {}).values():
            for name in {queue["name"] for queue in queues}:
                counts[name] = counts.get(name, 0) + 1
        _workers_cache = (time.monotonic(), counts)
        return dict(counts)


def forget_workers() -> None:
    """Tests: ask the workers again on the next scrape."""
    global _workers_cache
    with _workers_lock:
        _workers_cache = None


def _predictions() -> Iterator[Metric]:
    from apps.cases.models import Prediction
    from apps.models.models import ModelVersion

    family = GaugeMetricFamily(
        "cxr_predictions",
        PLATFORM_METRICS["cxr_predictions"].split(": ", 1)[1],
        labels=["label", "model_version", "model_version_id"],
    )
    rows = (
        Prediction.objects.order_by()
        .filter(status=Prediction.Status.DONE)
        .values_list("label", "model_version_id", "model_version__name")
        .annotate(n=Count("pk"))
    )
    for label, version_id, name, n in rows:
        family.add_metric([label, name or "", str(version_id or "")], n)
    yield family
    info = GaugeMetricFamily(
        "cxr_production_model_info",
        PLATFORM_METRICS["cxr_production_model_info"].split(": ", 1)[1],
        labels=["task", "model_version", "model_version_id", "sha256"],
    )
    for version in ModelVersion.objects.filter(status=ModelVersion.Status.PRODUCTION):
        info.add_metric([version.task, version.name, str(version.pk), version.sha256[:12]], 1)
    yield info


def _drift() -> Iterator[Metric]:
    from apps.sites.drift import current_levels

    family = GaugeMetricFamily(
        "cxr_site_drift",
        PLATFORM_METRICS["cxr_site_drift"].split(": ", 1)[1],
        labels=["site", "feature"],
    )
    for site, feature, psi in current_levels():
        family.add_metric([site, feature], psi)
    yield family


def _pacs() -> Iterator[Metric]:
    from apps.pacs.metrics import pacs_metrics

    yield from pacs_metrics()


class PlatformCollector(Collector):
    """The ``cxr_*`` metrics, read at scrape time. A part that cannot be read (broker
    down, no worker answering) is left out and ``cxr_metrics_errors{part}`` is 1."""

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily(
            "cxr_metrics_errors",
            PLATFORM_METRICS["cxr_metrics_errors"].split(": ", 1)[1],
            labels=["part"],
        )
        for part, produce in (
            ("jobs", _jobs),
            ("predictions", _predictions),
            ("pacs", _pacs),
            ("drift", _drift),
            ("queues", self._queues),
            ("workers", self._workers),
        ):
            try:
                families = list(produce())
            except Exception as exc:
                log.warning("metrics: could not read %s: %s: %s", part, type(exc).__name__, exc)
                errors.add_metric([part], 1)
                continue
            errors.add_metric([part], 0)
            yield from families
        yield errors

    @staticmethod
    def _queues() -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "cxr_queue_length",
            PLATFORM_METRICS["cxr_queue_length"].split(": ", 1)[1],
            labels=["queue"],
        )
        for queue, length in queue_lengths().items():
            family.add_metric([queue], length)
        yield family

    @staticmethod
    def _workers() -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "cxr_workers", PLATFORM_METRICS["cxr_workers"].split(": ", 1)[1], labels=["queue"]
        )
        for queue, n in workers_by_queue().items():
            family.add_metric([queue], n)
        yield family


_platform_registry = CollectorRegistry(auto_describe=False)
_platform_registry.register(PlatformCollector())


def exposition() -> bytes:
    """The metrics text: django-prometheus's (every process's, in multiprocess mode) and
    the platform's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        requests = generate_latest(registry)
    else:
        requests = generate_latest(REGISTRY)
    return requests + generate_latest(_platform_registry)


def client_allowed(request: HttpRequest) -> bool:
    from apps.accounts.lockout import client_address

    token = settings.CXR_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header.removeprefix("Bearer ").strip(), token)
    try:
        address = ipaddress.ip_address(client_address(request) or "")
    except ValueError:
        return False
    return any(address in network for network in settings.CXR_METRICS_ALLOWED_NETWORKS)


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not client_allowed(request):
        response = HttpResponse(
            "Forbidden: /metrics needs an address in CXR_METRICS_ALLOWED_NETWORKS or "
            "Authorization: Bearer <CXR_METRICS_TOKEN>.\n",
            status=403,
            content_type="text/plain",
        )
    else:
        response = HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response

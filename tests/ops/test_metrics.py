"""Prometheus metrics on one protected endpoint: requests by view and
status with latency histograms (django-prometheus), jobs by kind and status with their
durations, queue lengths of every queue in settings, predictions per label and model
version, failed jobs."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from cxrplatform.celery import QUEUES, app
from cxrplatform.metrics import PLATFORM_METRICS, forget_workers, queue_lengths
from tests.factories import ModelVersionFactory, PredictionFactory
from tests.reliability.conftest import REDIS_SERVER, RedisServer, broker

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-for-the-tests-0123456789"


@pytest.fixture(autouse=True)
def _fast_inspect(settings):
    settings.CXR_METRICS_INSPECT_TIMEOUT = 0.2  # no worker runs here: 0 answer quickly
    forget_workers()
    yield
    forget_workers()


def scrape(client, **headers) -> dict[str, list]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples, name, **labels) -> float:
    matching = [s.value for s in samples.get(name, []) if labels.items() <= s.labels.items()]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return matching[0]


@pytest.mark.slow
def test_metrics_refuse_other_networks_without_the_token(client, settings):
    settings.CXR_METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    settings.CXR_METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 403  # the test client is 127.0.0.1
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    settings.CXR_METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


@pytest.mark.slow
def test_metrics_answer_the_allowed_network_without_a_token(client, settings):
    settings.CXR_METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]
    assert client.get("/metrics").status_code == 200
    # Behind one proxy the address is the forwarded one (CXR_NUM_PROXIES), not the proxy's.
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    from rest_framework.settings import api_settings

    api_settings.reload()
    try:
        forwarded = client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9")
        assert forwarded.status_code == 403
    finally:
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 0}
        api_settings.reload()


@pytest.mark.slow
def test_requests_are_counted_by_view_and_status_with_latency(client, clinician):
    before = scrape(client)
    key = {"view": "cases:list", "method": "GET"}
    count = "django_http_responses_total_by_status_view_method_total"
    start_200 = sum(
        s.value
        for s in before.get(count, [])
        if {**key, "status": "200"}.items() <= s.labels.items()
    )
    client.force_login(clinician)
    assert client.get("/cases/").status_code == 200
    client.logout()
    assert client.get("/cases/").status_code == 302  # to the log-in page
    samples = scrape(client)
    assert value(samples, count, status="200", **key) == start_200 + 1
    assert value(samples, count, status="302", **key) >= 1
    latency = "django_http_requests_latency_seconds_by_view_method_count"
    assert value(samples, latency, **key) >= 2
    buckets = [
        s
        for s in samples["django_http_requests_latency_seconds_by_view_method_bucket"]
        if key.items() <= s.labels.items()
    ]
    assert len(buckets) > 5


@pytest.mark.slow
def test_jobs_by_kind_and_status_with_durations_and_failures(client):
    now = timezone.now()
    version = ModelVersionFactory(name="tiny-v1")
    for seconds in (0.2, 0.4, 3.0):
        PredictionFactory(
            model_version=version,
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
        )
    PredictionFactory(pending=True)
    PredictionFactory(
        status="failed",
        model_version=None,
        label="",
        probabilities={},
        error="boom",
        started_at=now - timedelta(seconds=50),
        finished_at=now - timedelta(hours=2),  # failed two hours ago
    )
    samples = scrape(client)
    assert value(samples, "cxr_jobs", kind="prediction", status="done") == 3
    assert value(samples, "cxr_jobs", kind="prediction", status="pending") == 1
    assert value(samples, "cxr_jobs", kind="prediction", status="failed") == 1
    assert value(samples, "cxr_jobs", kind="explanation", status="done") == 0
    hist = {"kind": "prediction", "status": "done"}
    assert value(samples, "cxr_job_duration_seconds_count", **hist) == 3
    assert value(samples, "cxr_job_duration_seconds_bucket", le="0.25", **hist) == 1
    assert value(samples, "cxr_job_duration_seconds_bucket", le="0.5", **hist) == 2
    assert value(samples, "cxr_job_duration_seconds_bucket", le="2.5", **hist) == 2
    assert value(samples, "cxr_job_duration_seconds_bucket", le="+Inf", **hist) == 3
    assert value(samples, "cxr_job_duration_seconds_sum", **hist) == pytest.approx(3.6, abs=0.01)
    recent = "cxr_jobs_finished_last_hour"
    assert value(samples, recent, kind="prediction", status="done") == 3
    assert value(samples, recent, kind="prediction", status="failed") == 0
    assert value(samples, "cxr_predictions", label="normal", model_version="tiny-v1") == 3


@pytest.mark.slow
def test_production_model_is_named(client, production_model):
    samples = scrape(client)
    info = value(
        samples,
        "cxr_production_model_info",
        task="classification",
        model_version_id=str(production_model.pk),
    )
    assert info == 1


PREFIX = "cxr-metrics-test:"


@pytest.fixture
def own_broker(tmp_path):
    """A redis-server of this test's own with a Redis key prefix, and the app switched to
    it: no worker or purge of another test can touch its queues."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    options = app.conf.broker_transport_options
    app.conf.broker_transport_options = {**options, "global_keyprefix": PREFIX}
    try:
        with broker(server.url):  # new connection and producer pools, with the prefix
            yield server
    finally:
        app.conf.broker_transport_options = options
        server.stop()


@pytest.mark.slow
def test_queue_lengths_cover_every_queue_in_settings_with_a_key_prefix(client, own_broker):
    """Every queue of cxrplatform.celery.QUEUES (a new one appears without a code change),
    counted on a real broker whose keys carry a global_keyprefix (as the tests' xdist
    processes and a shared production Redis use): messages published with no worker wait
    there and are counted. kombu's passive queue_declare missed prefixed queues (0)."""
    import redis

    assert queue_lengths() == dict.fromkeys(QUEUES, 0)
    with app.producer_or_acquire() as producer:
        for queue, n in (("inference", 2), ("default", 1)):
            for _ in range(n):
                producer.publish(
                    {"probe": True},
                    exchange="cxr",
                    routing_key=queue,
                    declare=[q for q in app.conf.task_queues if q.name == queue],
                    serializer="json",
                )
    raw = redis.Redis.from_url(own_broker.url)
    assert raw.llen(f"{PREFIX}inference") == 2  # where the messages really are
    assert raw.llen("inference") == 0
    samples = scrape(client)
    by_queue = {s.labels["queue"]: s.value for s in samples["cxr_queue_length"]}
    assert set(by_queue) == set(QUEUES)
    assert by_queue["inference"] == 2
    assert by_queue["default"] == 1
    assert by_queue["explain"] == 0
    workers = {s.labels["queue"]: s.value for s in samples["cxr_workers"]}
    assert set(workers) >= set(QUEUES)
    assert value(samples, "cxr_metrics_errors", part="queues") == 0


@pytest.mark.slow
def test_an_unreachable_broker_is_reported_not_fatal(client):
    # broker() drops the app's connection and producer pools on the way in and out: a pool
    # made for port 9 and kept would send a later test's control pings there.
    with broker("redis://127.0.0.1:9/0"):
        samples = scrape(client)
    assert value(samples, "cxr_metrics_errors", part="queues") == 1
    assert "cxr_queue_length" not in samples
    assert value(samples, "cxr_metrics_errors", part="jobs") == 0


def test_every_documented_metric_is_in_the_operations_guide():
    from tests.conftest import REPO_ROOT

    guide = (REPO_ROOT / "docs" / "operations.md").read_text()
    for name in PLATFORM_METRICS:
        assert f"`{name}`" in guide, name
    for name in (
        "django_http_requests_latency_seconds_by_view_method",
        "django_http_responses_total_by_status_view_method_total",
    ):
        assert f"`{name}`" in guide, name

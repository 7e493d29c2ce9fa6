"""/healthz (alive) and /readyz (database, migrations, broker, storage,
production model file by hash), JSON naming what failed, 503 when not ready. Every
failure here is a real one: a closed port, a storage path that cannot be a folder, a
replaced model file, a migration the database has not recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.db import connection

from cxrplatform.health import CHECKS, forget_passed_checks
from tests.reliability.conftest import broker


@pytest.fixture(autouse=True)
def _fresh_checks():
    forget_passed_checks()
    yield
    forget_passed_checks()


def _ready(client, **headers):
    response = client.get("/readyz", **headers)
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    return response, json.loads(response.content)


def test_healthz_answers_without_touching_dependencies(client):
    # No django_db mark: pytest-django refuses any database access in this test.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert json.loads(response.content) == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_ready_with_every_check_passed(client, production_model):
    response, body = _ready(client)
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["failed"] == []
    assert set(body["checks"]) == set(CHECKS)
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["model"]["classification"]["version"] == production_model.pk
    assert body["checks"]["migrations"]["unapplied"] == 0


@pytest.mark.django_db
def test_readyz_without_a_production_model_is_503_naming_the_model(client):
    response, body = _ready(client)
    assert response.status_code == 503
    assert body["status"] == "fail"
    assert body["failed"] == ["model"]
    assert "no production model" in body["checks"]["model"]["error"]


@pytest.mark.django_db
def test_readyz_refuses_a_model_file_whose_hash_changed(client, production_model):
    with production_model.artifact.open("ab") as fh:  # the file on storage, damaged
        fh.write(b"tampered")
    response, body = _ready(client)
    assert response.status_code == 503
    assert body["failed"] == ["model"]
    assert "the registry says" in body["checks"]["model"]["error"]


@pytest.mark.django_db
def test_readyz_names_a_missing_model_file(client, production_model):
    production_model.artifact.storage.delete(production_model.artifact.name)
    response, body = _ready(client)
    assert response.status_code == 503
    assert "missing" in body["checks"]["model"]["error"]


@pytest.mark.django_db
def test_readyz_is_503_when_the_broker_cannot_be_reached(client, production_model):
    # The discard port: nothing listens there. broker() switches the write and read URLs
    # (a CELERY_BROKER_URL environment variable, CI's, wins over broker_url, not over
    # those) and drops the app's pools on the way in and out.
    with broker("redis://127.0.0.1:9/0"):
        response, body = _ready(client)
    assert response.status_code == 503
    assert body["failed"] == ["broker"]
    assert body["checks"]["broker"]["error"]


@pytest.mark.django_db
def test_readyz_is_503_when_the_storage_cannot_be_written(
    client, production_model, settings, tmp_path
):
    production_model.artifact.name  # noqa: B018 - registered while the storage works
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the media folder should be")
    settings.MEDIA_ROOT = blocker / "media"
    response, body = _ready(client)
    assert response.status_code == 503
    assert "storage" in body["failed"]
    assert body["checks"]["storage"]["ok"] is False


@pytest.mark.django_db
def test_readyz_is_503_when_a_migration_is_not_applied(client, production_model):
    from django.db.migrations.loader import MigrationLoader

    # The app's newest migration (a leaf): an older one unrecorded under a recorded
    # leaf is not "left to apply".
    (_, newest), *_ = MigrationLoader(connection).graph.leaf_nodes("accounts")
    with connection.cursor() as cursor:  # the test's transaction is rolled back afterwards
        cursor.execute(
            "DELETE FROM django_migrations WHERE app = %s AND name = %s", ["accounts", newest]
        )
    response, body = _ready(client)
    assert response.status_code == 503
    assert body["failed"] == ["migrations"]
    assert f"accounts.{newest}" in body["checks"]["migrations"]["error"]


@pytest.mark.django_db
def test_probes_bypass_host_validation_and_the_https_redirect(client, settings, production_model):
    """Probes name the container (Host: web:8000) and speak plain HTTP inside the network."""
    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["cxr.example.org"]
    assert client.get("/healthz", HTTP_HOST="web:8000").status_code == 200
    assert client.get("/readyz", HTTP_HOST="web:8000").status_code == 200
    # Everything else still gets both.
    assert client.get("/login/", HTTP_HOST="web:8000").status_code == 400
    assert client.get("/login/", HTTP_HOST="cxr.example.org").status_code == 301


@pytest.mark.django_db
def test_readyz_tells_other_clients_the_verdict_alone(client, settings, production_model):
    """Any host may ask (probes name the container), but vendors, model versions and
    hashes and error text go only to the clients /metrics answers."""
    settings.CXR_METRICS_TOKEN = "a-metrics-token-of-32-characters"
    outside = {"REMOTE_ADDR": "203.0.113.5", "HTTP_HOST": "evil.example"}
    response, body = _ready(client, **outside)
    assert response.status_code == 200
    assert body == {"status": "ok"}
    response, body = _ready(
        client, **outside, HTTP_AUTHORIZATION="Bearer a-metrics-token-of-32-characters"
    )
    assert body["checks"]["model"]["classification"]["sha256"] == production_model.sha256[:12]
    production_model.artifact.storage.delete(production_model.artifact.name)
    forget_passed_checks()
    response, body = _ready(client, **outside)
    assert response.status_code == 503
    assert body == {"status": "fail"}  # no file names, no exception text


@pytest.mark.django_db
def test_readyz_remembers_a_passed_storage_check(client, production_model, settings):
    """A probe every few seconds must not write a file every time: the storage round
    trip, once passed, is remembered like the migration plan and the model's hash."""
    import shutil

    health = Path(settings.MEDIA_ROOT) / "health"
    _ready(client)
    shutil.rmtree(health, ignore_errors=True)
    health.write_text("a file where the probe's folder should be: no write can succeed")
    response, body = _ready(client)
    assert response.status_code == 200, body  # remembered: nothing was written
    assert body["checks"]["storage"]["ok"] is True
    forget_passed_checks()
    response, body = _ready(client)  # checked again: the write fails now
    assert response.status_code == 503
    assert body["failed"] == ["storage"]

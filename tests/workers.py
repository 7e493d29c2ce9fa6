"""A real Celery worker process for end-to-end and browser tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

REPO_ROOT = Path(__file__).resolve().parent.parent


def worker_database_url() -> str:
    """The test database as a URL, so the worker process writes where the test reads."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def worker(tmp_path, media_root):
    """`celery worker -Q inference,explain` on the test's database, broker and media."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=worker_database_url(),
        MEDIA_ROOT=str(media_root),
        CXR_VAR_DIR=str(settings.VAR_DIR),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CXR_WARM_MODEL="1",
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "cxrplatform",
                "worker",
                "-Q",
                "inference,explain",
                "--concurrency",
                "1",
                "--pool",
                "prefork",
                "--loglevel",
                "INFO",
                "--hostname",
                f"e2e-{uuid.uuid4().hex[:8]}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the pool children stop with it
        )
    try:
        yield process, log_path
    finally:
        # Stop the whole group and wait, so no pool child still holds a database
        # session when the test database is dropped.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break  # every process of the group has exited
            time.sleep(0.2)

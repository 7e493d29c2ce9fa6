"""A real Celery worker process for end-to-end and browser tests."""

from __future__ import annotations

import contextlib
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


def start_worker(
    *,
    log_path: Path,
    media_root: Path,
    queues: str = "inference,segmentation,explain",
    broker_url: str | None = None,
    hostname: str | None = None,
    extra_env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> subprocess.Popen:
    """Start ``celery worker`` on the test's database and media; its own process group.

    ``broker_url`` defaults to the test run's broker; ``extra_env`` sets
    worker-only settings (a short visibility timeout, a test pause).
    """
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=worker_database_url(),
        MEDIA_ROOT=str(media_root),
        CXR_VAR_DIR=str(settings.VAR_DIR),
        CELERY_BROKER_URL=broker_url or settings.CELERY_BROKER_URL,
        CXR_WARM_MODEL="1",
        # The worker uses the Redis key prefix this test process publishes with (none
        # when the run's broker is not Redis, even if the worker's own broker is).
        CXR_TESTS_KEYPREFIX=str(
            settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
        ),
    )
    env.update(extra_env or {})
    with log_path.open("w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "cxrplatform",
                "worker",
                "-Q",
                queues,
                "--concurrency",
                "1",
                "--pool",
                "prefork",
                "--loglevel",
                "INFO",
                "--hostname",
                hostname or f"e2e-{uuid.uuid4().hex[:8]}@%h",
                "--without-gossip",
                "--without-mingle",
                *extra_args,
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the pool children stop with it
        )


def stop_worker(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop the worker's whole process group and wait until every process of it has exited,
    so no pool child still holds a database session when the test database is dropped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
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


def wait_for_log(log_path: Path, text: str, process: subprocess.Popen, timeout: float = 120):
    """Wait until the worker's log contains ``text`` (e.g. ``ready.``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log_path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            pytest.fail(f"worker exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)
    pytest.fail(
        f"{text!r} not in the worker log within {timeout} s:\n{log_path.read_text()[-4000:]}"
    )


@pytest.fixture
def worker(tmp_path, media_root):
    """`celery worker -Q inference,segmentation,explain` on the test database, broker, media."""
    log_path = tmp_path / "worker.log"
    process = start_worker(log_path=log_path, media_root=media_root)
    try:
        yield process, log_path
    finally:
        stop_worker(process)

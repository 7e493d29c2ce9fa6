"""Flower, the Celery monitor, runs behind authentication: the real
`celery flower` process with the basic-auth setting docker-compose gives it refuses
anonymous requests to its pages and API and answers with the credentials."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings

from tests.conftest import REPO_ROOT
from tests.workers import stop_worker

pytestmark = [pytest.mark.worker]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)  # noqa: S310 - a loopback URL of this test
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_flower_refuses_anonymous_requests_and_answers_with_credentials(tmp_path):
    port = _free_port()
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        CXR_VAR_DIR=str(settings.VAR_DIR),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CXR_TESTS_KEYPREFIX=str(
            settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
        ),
        FLOWER_BASIC_AUTH="ops:flower-secret-for-tests",
        FLOWER_UNAUTHENTICATED_API="false",
    )
    log_path = tmp_path / "flower.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "cxrplatform", "flower",
             "--address=127.0.0.1", f"--port={port}"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("flower did not listen within 90 s:\n" + log_path.read_text()[-3000:])
        assert _status(f"{base}/") == 401
        assert _status(f"{base}/api/workers") == 401
        assert _status(f"{base}/", auth="ops:wrong") == 401
        assert _status(f"{base}/", auth="ops:flower-secret-for-tests") == 200
        assert _status(f"{base}/api/workers", auth="ops:flower-secret-for-tests") == 200
        assert _status(f"{base}/healthcheck") == 200  # the compose healthcheck needs no auth
    finally:
        stop_worker(process)

"""Fault-test machinery: a Redis server each test owns, the test's own broker switch,
and waiting on job rows.

The Redis here is a real ``redis-server`` process on a free loopback port,
without persistence (``--save "" --appendonly no``), so a restart loses every
queued message: the harshest broker restart. Tests that need it skip with a
reason where the binary is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cxrplatform.celery import app

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` on 127.0.0.1:<port> that the test stops and starts at will."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        assert REDIS_SERVER is not None
        log = (self.workdir / "redis.log").open("a")
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def broker(url: str) -> Iterator[None]:
    """Send this test process's tasks to ``url`` (the test's own Redis), then switch back.

    The Celery app keeps a connection pool and a producer pool for its broker;
    both are dropped so the next publish connects to the new URL.
    """
    keys = ("broker_url", "broker_write_url", "broker_read_url")
    previous = {key: app.conf.get(key) for key in keys}

    def _switch(values: dict) -> None:
        # The pools themselves are kombu's, shared and keyed by connection: drop the
        # app's references only, never close them.
        app._pool = None  # type: ignore[attr-defined]  # private, dropped on purpose (above)
        app.amqp._producer_pool = None  # type: ignore[attr-defined]
        for key, value in values.items():
            app.conf[key] = value

    _switch(dict.fromkeys(keys, url))
    assert app.connection_for_write().as_uri(include_password=True) == url
    try:
        yield
    finally:
        _switch(previous)


def wait_for(predicate, *, timeout: float, what: str, logs: tuple[Path, ...] = (), poll=0.2):
    """Poll ``predicate`` until it returns a truthy value; fail with the logs on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    tails = "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    pytest.fail(f"{what} not within {timeout} s\n{tails}")

"""The warm decoder (apps.cases.decoder_server) answers exactly what a freshly spawned
decoder answers, in a child of its own per file, and is started again if it dies."""

from __future__ import annotations

import os
import signal
import time

import pytest

from apps.cases import decoder_server
from apps.cases.decoding import DecodeRefused, decode_upload
from tests.conftest import IMAGES


@pytest.fixture
def fresh_server():
    with decoder_server._lock:
        if decoder_server._server is not None:
            decoder_server._server.close()
        decoder_server._server = None
    yield
    with decoder_server._lock:
        if decoder_server._server is not None:
            decoder_server._server.close()
        decoder_server._server = None


@pytest.mark.parametrize("name", ["2168a917.jpg", "IM-0117-0001.jpeg"])
def test_the_warm_decoder_answers_what_a_spawned_one_answers(name, settings, fresh_server):
    content = (IMAGES / name).read_bytes()
    settings.CXR_DECODE_SERVER = False
    spawned = decode_upload("picture", content)
    assert decoder_server._server is None
    settings.CXR_DECODE_SERVER = True
    warm = decode_upload("picture", content)
    assert decoder_server._server is not None
    assert decoder_server._server.alive()
    assert warm == spawned


def test_refusals_come_back_the_same_way(settings, fresh_server):
    settings.CXR_DECODE_SERVER = True
    with pytest.raises(DecodeRefused) as refused:
        decode_upload("picture", b"not an image at all")
    assert refused.value.status == 415
    assert "not an image file" in refused.value.problem


def test_a_dead_server_is_started_again(settings, fresh_server):
    settings.CXR_DECODE_SERVER = True
    content = (IMAGES / "2168a917.jpg").read_bytes()
    first = decode_upload("picture", content)
    server = decoder_server._server
    assert server is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    assert decode_upload("picture", content) == first
    assert decoder_server._server is not server
    assert decoder_server._server.alive()


def test_the_server_leaves_when_its_web_process_is_gone(tmp_path):
    """A server whose parent exits stops within a few seconds (no orphans)."""
    import subprocess
    import sys

    script = (
        "import sys, time; sys.path.insert(0, '.');"
        "from apps.cases import decoder_server as d;"
        "import os;"
        "s = d._Server(dict(os.environ), '.');"
        "print(s.process.pid, flush=True)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    pytest.fail("the decoder server outlived its web process")

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
@pytest.mark.slow
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


@pytest.mark.slow
def test_refusals_come_back_the_same_way(settings, fresh_server):
    settings.CXR_DECODE_SERVER = True
    with pytest.raises(DecodeRefused) as refused:
        decode_upload("picture", b"not an image at all")
    assert refused.value.status == 415
    assert "not an image file" in refused.value.problem


@pytest.mark.slow
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
    assert decoder_server._server is not None
    assert decoder_server._server.alive()


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_server_is_told_the_check_files_and_warms_up_with_them(settings, fresh_server):
    """The web passes the checks its requests name; warm_up loads each once (the server
    does so before it forks, so its children find them loaded) and the watermark band."""
    import json
    from pathlib import Path

    from apps.cases import decoding
    from ml.generate.watermark import band

    decode_upload("picture", (IMAGES / "2168a917.jpg").read_bytes())
    assert decoder_server._server is not None
    environ = Path(f"/proc/{decoder_server._server.process.pid}/environ").read_bytes()
    told = dict(v.split(b"=", 1) for v in environ.split(b"\0") if b"=" in v)
    warm = json.loads(told[b"CXR_DECODER_WARM"])
    assert warm["ood_gate"] == str(settings.CXR_OOD_GATE)
    assert warm["view_check"] == str(settings.CXR_VIEW_CHECK)
    assert warm["modality_check"] == str(settings.CXR_MODALITY_CHECK)

    decoding._loaded.cache_clear()
    band.cache_clear()
    decoding.warm_up(warm)
    assert decoding._loaded.cache_info().currsize == 3  # gate, modality and view checks
    assert band.cache_info().currsize == 1
    decoding.warm_up({})  # no checks configured: still decodes, loads nothing
    assert decoding._loaded.cache_info().currsize == 3

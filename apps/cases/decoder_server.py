"""A warm decoder: a process that has imported the decoders and forks a child per upload.

``apps.cases.decoding`` decodes each upload in a process of its own with hard ceilings
(address space, CPU time, wall clock). Started as a new interpreter
(``python -m apps.cases.decoding``), that process costs more than the decoding: the
interpreter and the imports of PIL, NumPy, pydicom and the checks take about 0.4 s of
CPU per upload (1-2 s on a busy 2-core machine), most of an upload's time. Here one
server per web process, started on first use with the same clean environment (nothing
of the web process's: no secrets), imports all of that once and forks a child per
upload. The child is what the spawned process was, without the imports: an address
space of its own, the ceilings set before it reads the file (``decoding.main``), gone
after one file, so nothing one file does can reach the next. (Android's and Chromium's
"zygote".)

Protocol, over a Unix socket in a private folder (mode 0700): the web process connects,
sends what the spawned child reads on stdin (one JSON line, then the file's bytes) and
closes its side for writing; the forked child writes its pid (4 bytes, so the web
process can kill it at the time limit), then what the spawned child writes on stdout,
and exits. An answer that ends before the JSON line means the child died. The server
exits when the web process that started it is gone. ``CXR_DECODE_SERVER=0`` spawns an
interpreter per upload instead.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

# What the child needs, imported once by the server (each one optional: a module that
# fails to import here is imported by the child, as the spawned process would).
PRELOAD = (
    "numpy",
    "PIL.Image",
    "PIL.PngImagePlugin",
    "PIL.JpegImagePlugin",
    "apps.cases.deidentify",
    "apps.cases.pixel_data",
    "ml.data.preprocess",
    "ml.data.dicom",
    "ml.serving.ood",
    "ml.serving.viewcheck",
    "ml.ct.modality",
    "ml.serving.burned_text",
    "ml.generate.watermark",
    "cv2",  # the watermark check's (imported on first use: ~40-110 ms in every child)
)
START_SECONDS = 60.0
PID = struct.Struct("!I")


class DecoderUnavailableError(RuntimeError):
    """The server could not be started or reached (the caller spawns a process instead)."""


class _Server:
    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self.folder = tempfile.mkdtemp(prefix="cxr-decoder-")  # mode 0700
        self.path = os.path.join(self.folder, "decoder.sock")
        self.owner = os.getpid()
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            [sys.executable, "-m", "apps.cases.decoder_server", self.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )
        deadline = time.monotonic() + START_SECONDS
        while not os.path.exists(self.path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise DecoderUnavailableError("the decoder server did not start")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.process.poll() is None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


_lock = threading.Lock()
_server: _Server | None = None


def _running(env: dict[str, str], cwd: str) -> _Server:
    global _server
    with _lock:
        if _server is None or not _server.alive():
            if _server is not None and _server.owner == os.getpid():
                _server.close()
            _server = _Server(env, cwd)
        return _server


def run(payload: bytes, timeout: float, *, env: dict[str, str], cwd: str) -> bytes:
    """What a decoder child answers to ``payload`` (empty or cut short if it died).

    Raises ``TimeoutError`` when there is no whole answer within ``timeout`` seconds
    (the child is killed), ``DecoderUnavailableError`` when no server can be reached.
    """
    for attempt in (1, 2):  # a server that died is started again once
        server = _running(env, cwd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(server.path)
        except OSError:
            sock.close()
            if attempt == 2:
                raise DecoderUnavailableError("the decoder server cannot be reached") from None
            with _lock:
                server.close()
            continue
        with sock:
            return _exchange(sock, payload, timeout)
    raise DecoderUnavailableError("the decoder server cannot be reached")  # pragma: no cover


def _exchange(sock: socket.socket, payload: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    pid = None
    received = bytearray()
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
            if pid is None and len(received) >= PID.size:
                (pid,) = PID.unpack_from(received)
    except TimeoutError:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        raise TimeoutError from None
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child died while reading: what came back says so
    return bytes(received[PID.size :])


# -- the server ----------------------------------------------------------------------------


def serve(path: str) -> None:
    """Accept connections on ``path``; fork a child for each, which answers and exits."""
    from apps.cases import decoding

    for name in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    with contextlib.suppress(Exception):
        from PIL import Image

        Image.init()  # every PIL plugin, which Image.open imports on its first miss
    with contextlib.suppress(Exception):
        import cv2

        # OpenCV's own threads off (children run one file on one core): a server that
        # had started its thread pool would fork children with a pool but no threads.
        cv2.setNumThreads(0)
    with contextlib.suppress(Exception):
        decoding.warm_up(json.loads(os.environ.get("CXR_DECODER_WARM") or "{}"))
    # Everything imported so far is shared with the children copy-on-write; a garbage
    # collection in a child would walk (and so copy) all of it. Frozen objects are never
    # walked by the collector.
    gc.freeze()
    owner = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".part")
    os.replace(path + ".part", path)  # the path appears once it accepts connections
    listener.listen(64)
    listener.settimeout(1.0)
    while os.getppid() == owner:  # the web process that started it is alive
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        pid = os.fork()
        if pid == 0:  # the child: one file, then gone
            code = 1
            try:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                conn.setblocking(True)
                conn.sendall(PID.pack(os.getpid()))
                os.dup2(conn.fileno(), 0)
                os.dup2(conn.fileno(), 1)
                conn.close()
                code = decoding.main()
                sys.stdout.flush()
            finally:
                os._exit(code)
        conn.close()
    listener.close()
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)  # the folder the web made


if __name__ == "__main__":
    serve(sys.argv[1])

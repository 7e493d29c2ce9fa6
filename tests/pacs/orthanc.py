"""A real Orthanc for the PACS tests: Debian's ``orthanc`` (and ``orthanc-dicomweb``)
started on free loopback ports with a throw-away configuration and storage.

Tests that need it skip with a reason where ``Orthanc`` is missing, unless
``CXR_REQUIRE_ORTHANC=1`` (.ci/run), where they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ORTHANC = shutil.which("Orthanc") or (
    "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
)
PLUGINS = "/usr/share/orthanc/plugins"


def require_orthanc() -> str:
    if ORTHANC is None:
        reason = "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
        if os.environ.get("CXR_REQUIRE_ORTHANC") == "1":
            pytest.fail(f"CXR_REQUIRE_ORTHANC=1 but {reason}")
        pytest.skip(reason)
    return ORTHANC


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orthanc:
    """One Orthanc on 127.0.0.1 that knows the platform's listener as modality ``cxr``."""

    def __init__(
        self,
        workdir: Path,
        *,
        platform_ae: str,
        platform_port: int,
        dicomweb_servers: dict[str, Any] | None = None,
    ) -> None:
        self.binary = require_orthanc()
        self.workdir = workdir
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.ae_title = "ORTHANC"
        self.platform_ae = platform_ae
        self.platform_port = platform_port
        self.dicomweb_servers = dicomweb_servers or {}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def configuration(self) -> dict[str, Any]:
        return {
            "Name": "cxr-tests",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {"cxr": [self.platform_ae, "127.0.0.1", self.platform_port]},
            "Plugins": [PLUGINS] if Path(PLUGINS).exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": self.dicomweb_servers},
            "StableAge": 1,
            "ConcurrentJobs": 1,
        }

    def start(self) -> None:
        assert self.process is None
        (self.workdir / "storage").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self.configuration(), indent=2))
        log = (self.workdir / "orthanc.log").open("a")
        self.process = subprocess.Popen(
            [self.binary, str(config)], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("Orthanc exited:\n" + self.log()[-3000:]) from None
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer within 30 s:\n" + self.log()[-3000:])

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def log(self) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> Any:  # fmt: skip
        req = urllib.request.Request(self.url + path, data=body, method=method)  # noqa: S310
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=60) as response:  # noqa: S310
            data = response.read()
        if response.headers.get_content_type() == "application/json":
            return json.loads(data)
        return data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, content: bytes) -> str:
        """Store a DICOM file in Orthanc; its instance id."""
        return self.request("POST", "/instances", content, "application/dicom")["ID"]

    def send_to_platform(self, instance_ids: list[str]) -> Any:
        """C-STORE from Orthanc to the platform's listener (one association)."""
        body = json.dumps({"Resources": instance_ids, "Synchronous": True}).encode()
        return self.request("POST", "/modalities/cxr/store", body)

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study (by Study Instance UID) with its main tags."""
        body = json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).encode()
        studies = self.request("POST", "/tools/find", body)
        instances = []
        for study in studies:
            instances.extend(self.get(f"/studies/{study}/instances"))
        return instances

    def file(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file")


def wait_for(predicate, *, timeout: float, what: str, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    detail = "\n".join(f"--- {name}:\n{text()[-3000:]}" for name, text in logs)
    pytest.fail(f"{what} not within {timeout} s\n{detail}")


def http_error_body(exc: urllib.error.HTTPError) -> str:
    return exc.read().decode(errors="replace")[:1000]

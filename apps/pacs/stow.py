"""Receiving by STOW-RS: an HTTP endpoint of the listener process for routers that speak
DICOMweb, not DIMSE.

``POST /studies`` (or ``/studies/{uid}``) with ``multipart/related; type="application/dicom"``,
on ``CXR_DICOM_BIND:CXR_DICOMWEB_STOW_PORT`` (0: off). A client must come from an address
of ``CXR_DICOM_ALLOWED`` and, where ``CXR_DICOMWEB_STOW_TOKEN`` is set, carry
``Authorization: Bearer <token>``. The instances of one request go through the same
intake as one C-STORE association (``apps.pacs.intake``). The answer is the STOW-RS
response (DICOM JSON): 200 when every instance was stored, 202 when some were refused,
409 when all were; a refused instance is in ``FailedSOPSequence``.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.conf import settings
from django.db import close_old_connections

log = logging.getLogger(__name__)

PROCESSING_FAILURE = 0x0110


def parse_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a ``multipart/related`` body whose type is application/dicom."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    if not message.is_multipart():
        raise ValueError("the body is not multipart/related")
    parts = []
    for part in message.iter_parts():
        if part.get_content_type() == "application/dicom":
            payload = part.get_payload(decode=True)
            parts.append(payload if isinstance(payload, bytes) else b"")
    return parts


def _allowed_address(address: str) -> bool:
    from apps.pacs.scp import allow_list

    return any(item.address in ("*", address) for item in allow_list())


def _authorised(header: str) -> bool:
    token = settings.CXR_DICOMWEB_STOW_TOKEN
    if not token:
        return True
    return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


def _sop(item: Any) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [item.instance.get("SOPClassUID") or "1.2"]},
        "00081155": {"vr": "UI", "Value": [item.instance.get("SOPInstanceUID") or "1.2"]},
    }


class StowHandler(BaseHTTPRequestHandler):
    server_version = "cxr-stow"

    def log_message(self, format: str, *args: Any) -> None:
        log.info("STOW-RS %s: " + format, self.client_address[0], *args)

    def _answer(self, status: int, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self, limit: int) -> bytes:
        """The request body, with a Content-Length or chunked; ValueError over ``limit``."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()  # the empty trailer
                    return b"".join(chunks)
                total += size
                if total > limit:
                    raise ValueError("too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            raise ValueError("too large")
        return self.rfile.read(length) if length > 0 else b""

    def do_POST(self) -> None:
        from apps.pacs import intake
        from apps.pacs.intake import ReceivedInstance
        from apps.pacs.models import Refusal

        address = self.client_address[0]
        if "/studies" not in self.path:
            self._answer(404)
            return
        if not _allowed_address(address) or not _authorised(self.headers.get("Authorization", "")):
            close_old_connections()
            intake.refuse(
                reason=f"STOW-RS from {address}: not allowed (CXR_DICOM_ALLOWED, token)",
                calling_ae="STOW",
                address=address,
            )
            self._answer(403)
            return
        limit = settings.CXR_MAX_UPLOAD_BYTES * settings.CXR_MAX_IMAGES_PER_CASE
        try:
            body = self._body(limit)
        except ValueError:
            self._answer(413)
            return
        if not body:
            self._answer(400)
            return
        try:
            parts = parse_multipart(self.headers.get("Content-Type", ""), body)
        except ValueError:
            self._answer(415)
            return
        instances = [ReceivedInstance.from_bytes(part) for part in parts if part]
        if not instances:
            self._answer(400)
            return
        close_old_connections()
        try:
            intake.receive_association(instances, calling_ae="STOW", address=address)
            refused = set(
                Refusal.objects.filter(upload_ref__in=[i.ref for i in instances]).values_list(
                    "upload_ref", flat=True
                )
            )
        finally:
            close_old_connections()
        stored = [i for i in instances if i.ref not in refused]
        failed = [i for i in instances if i.ref in refused]
        response: dict[str, Any] = {}
        if stored:
            response["00081199"] = {"vr": "SQ", "Value": [_sop(i) for i in stored]}
        if failed:
            response["00081198"] = {
                "vr": "SQ",
                "Value": [
                    {**_sop(i), "00081197": {"vr": "US", "Value": [PROCESSING_FAILURE]}}
                    for i in failed
                ],
            }
        self._answer(200 if not failed else 202 if stored else 409, response)


def start(host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), StowHandler)
    threading.Thread(target=server.serve_forever, name="stow-rs", daemon=True).start()
    log.info("STOW-RS endpoint on http://%s:%s/studies", host, port)
    return server

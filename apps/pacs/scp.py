"""The DICOM Storage SCP (C-STORE listener), run as its own process by
``manage.py dicom_listener``.

* Associations: only calling AE titles named in ``CXR_DICOM_ALLOWED`` (``AE@address``,
  ``*`` for any AE title) are accepted; the listener's own AE title is accepted too, for
  the C-ECHO of ``/readyz``. A C-STORE whose (AE title, address) pair is not allowed
  is refused (status 0x0124, "not authorised") and counted; nothing of it is kept.
* Received instances wait in memory per association; when the association is released
  (or aborted) a single intake thread turns them into cases (``apps.pacs.intake``), so
  the C-STORE answers quickly and one study of several images becomes one case.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import close_old_connections

log = logging.getLogger(__name__)

NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA700


@dataclass(frozen=True)
class Allowed:
    ae_title: str  # "*": any
    address: str

    @classmethod
    def parse(cls, text: str) -> Allowed:
        ae, sep, address = text.partition("@")
        if not sep or not ae or not address:
            raise ValueError(f"{text!r} is not AE@address")
        return cls(ae.strip(), address.strip())

    def admits(self, ae_title: str, address: str) -> bool:
        return self.ae_title in ("*", ae_title.strip()) and self.address in ("*", address)


def allow_list() -> list[Allowed]:
    return [Allowed.parse(item) for item in settings.CXR_DICOM_ALLOWED]


def is_allowed(ae_title: str, address: str) -> bool:
    return any(item.admits(ae_title, address) for item in allow_list())


class Listener:
    """The AE, its handlers and the intake thread."""

    def __init__(self, *, ae_title: str, host: str, port: int) -> None:
        self.ae_title, self.host, self.port = ae_title, host, port
        self.pending: dict[int, list] = {}
        self.lock = threading.Lock()
        self.work: queue.Queue = queue.Queue()
        self.server: Any = None
        self.http: Any = None

    def build_ae(self):
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0
        titles = {item.ae_title for item in allow_list()}
        if "*" not in titles:
            ae.require_calling_aet = sorted(titles | {self.ae_title})
        handlers = [
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_RELEASED, self.on_end),
            (evt.EVT_ABORTED, self.on_end),
        ]
        return ae, handlers

    def on_store(self, event) -> int:
        from apps.pacs.intake import ReceivedInstance

        requestor = event.assoc.requestor
        ae_title, address = requestor.ae_title.strip(), requestor.address
        content = event.encoded_dataset()
        if not is_allowed(ae_title, address):
            self._refuse_later(
                f"{ae_title}@{address} is not in CXR_DICOM_ALLOWED", ae_title, address
            )
            return NOT_AUTHORISED
        if len(content) > settings.CXR_MAX_UPLOAD_BYTES:
            self._refuse_later(
                "the instance is larger than CXR_MAX_UPLOAD_BYTES", ae_title, address
            )
            return OUT_OF_RESOURCES
        with self.lock:
            self.pending.setdefault(id(event.assoc), []).append(
                ReceivedInstance.from_bytes(content)
            )
        return 0x0000

    def _refuse_later(self, reason: str, ae_title: str, address: str) -> None:
        self.work.put(("refuse", reason, ae_title, address))

    def on_end(self, event) -> None:
        with self.lock:
            instances = self.pending.pop(id(event.assoc), [])
        if instances:
            requestor = event.assoc.requestor
            self.work.put(("study", instances, requestor.ae_title.strip(), requestor.address))

    def intake_loop(self) -> None:
        from apps.pacs import intake

        while True:
            item = self.work.get()
            if item is None:
                return
            close_old_connections()
            try:
                if item[0] == "refuse":
                    _, reason, ae_title, address = item
                    intake.refuse(reason=reason, calling_ae=ae_title, address=address)
                else:
                    _, instances, ae_title, address = item
                    intake.receive_association(instances, calling_ae=ae_title, address=address)
            except Exception:
                log.exception("PACS intake of an association from %s failed", item[2])
            finally:
                close_old_connections()
                self.work.task_done()

    def start(self) -> None:
        ae, handlers = self.build_ae()
        threading.Thread(target=self.intake_loop, name="pacs-intake", daemon=True).start()
        self.server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        if settings.CXR_DICOMWEB_STOW_PORT:
            from apps.pacs import stow

            self.http = stow.start(self.host, settings.CXR_DICOMWEB_STOW_PORT)
        log.info(
            "DICOM listener %s on %s:%s; allowed: %s",
            self.ae_title, self.host, self.port, ", ".join(settings.CXR_DICOM_ALLOWED) or "nobody",
        )  # fmt: skip

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
        if self.http is not None:
            self.http.shutdown()
        self.work.put(None)


def echo(*, host: str, port: int, called_ae: str, calling_ae: str, timeout: float = 3) -> bool:
    """A C-ECHO to the listener (``/readyz``)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()

"""DICOMweb: the pull option for a PACS that does not push, and STOW-RS for the return.

**Pull** (Celery beat every ``CXR_PACS_PULL_SECONDS`` where ``CXR_PACS_DICOMWEB_URL`` is
set): a QIDO-RS search for chest X-ray studies (``ModalitiesInStudy`` DX, then CR) of
the last ``CXR_PACS_PULL_DAYS`` days; each study not taken before is retrieved with
WADO-RS and goes through the same intake as a C-STORE (``apps.pacs.intake``), so it
becomes one case of the service account, with the same checks and refusals. A study is
taken once (:class:`apps.pacs.models.PulledStudy`, by a keyed hash of its UID), at most
``CXR_PACS_PULL_MAX_STUDIES`` per run.

**Return by STOW-RS**: a ``CXR_PACS_DESTINATION`` that is an ``http(s)://`` DICOMweb
root gets the results by STOW-RS instead of C-STORE.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone
from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

CHEST_MODALITIES = ("DX", "CR")


def client(url: str):
    from dicomweb_client.api import DICOMwebClient

    headers = {}
    if settings.CXR_PACS_DICOMWEB_AUTHORIZATION:
        headers["Authorization"] = settings.CXR_PACS_DICOMWEB_AUTHORIZATION
    return DICOMwebClient(url=url.rstrip("/"), headers=headers, timeout=30)


def study_key(study_uid: str) -> str:
    secret = (settings.CXR_PACS_MAPPING_KEY or settings.SECRET_KEY).encode()
    return hmac.new(secret, b"pulled-study:" + study_uid.encode(), hashlib.sha256).hexdigest()


def _file_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pull_new_studies(url: str | None = None) -> dict[str, int]:
    """Take the new chest X-ray studies of the DICOMweb server; counts of what happened."""
    from apps.pacs.intake import ReceivedInstance, receive_study
    from apps.pacs.models import PulledStudy

    url = url or settings.CXR_PACS_DICOMWEB_URL
    if not url:
        return {"found": 0, "pulled": 0, "cases": 0}
    web = client(url)
    since = (timezone.now() - timedelta(days=settings.CXR_PACS_PULL_DAYS)).strftime("%Y%m%d")
    found: dict[str, None] = {}
    for modality in CHEST_MODALITIES:
        for study in web.search_for_studies(
            search_filters={"ModalitiesInStudy": modality, "StudyDate": f"{since}-"},
            fields=["StudyInstanceUID"],
        ):
            uid = study.get("0020000D", {}).get("Value", [""])[0]
            if uid:
                found[uid] = None
    address = urlsplit(url).hostname or url
    pulled = cases = 0
    for uid in found:
        if pulled >= settings.CXR_PACS_PULL_MAX_STUDIES:
            break
        key = study_key(uid)
        if PulledStudy.objects.filter(key=key).exists():
            continue
        pulled += 1
        instances = [ReceivedInstance.from_bytes(_file_bytes(ds)) for ds in web.retrieve_study(uid)]
        case = (
            receive_study(instances, calling_ae="DICOMWEB", address=address) if instances else None
        )
        PulledStudy.objects.create(key=key, case=case)
        cases += case is not None
    log.info(
        "DICOMweb pull from %s: %d found, %d pulled, %d case(s)", address, len(found), pulled, cases
    )
    return {"found": len(found), "pulled": pulled, "cases": cases}


def store(datasets: list[Dataset], url: str) -> None:
    """STOW-RS of the results to a DICOMweb root (raises on any failure)."""
    from apps.pacs.returns import SendFailedError

    try:
        answer = client(url).store_instances(datasets)
    except Exception as exc:
        raise SendFailedError(
            f"STOW-RS to {urlsplit(url).hostname}: {type(exc).__name__}: {exc}"
        ) from exc
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        raise SendFailedError(f"STOW-RS: {len(failed)} object(s) refused by the destination")

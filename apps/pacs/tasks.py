"""Celery tasks of the PACS connection (the ``default`` queue)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError

from cxrplatform.celery import platform_task

log = logging.getLogger(__name__)


def backoff(retries: int) -> int:
    """Seconds before the next try: base x 2^retries, at most five minutes."""
    return int(min(settings.CXR_PACS_RETURN_BACKOFF_SECONDS * 2**retries, 300))


@platform_task(queue="default", max_retries=50, retry_for=(OperationalError, InterfaceError))
def return_results(self, case_id: int) -> dict:
    """Send a PACS case's finished results back (``apps.pacs.services.return_case``),
    retrying with backoff while the destination is down; idempotent by SOP Instance UID."""
    from apps.pacs.returns import SendFailedError
    from apps.pacs.services import NotReady, gave_up, return_case

    try:
        return return_case(case_id)
    except NotReady as exc:
        log.info("case %s: not returned yet (%s); sent when it finishes", case_id, exc)
        return {"sent": 0, "waiting": str(exc)}
    except SendFailedError:
        if self.request.retries + 1 >= settings.CXR_PACS_RETURN_MAX_ATTEMPTS:
            gave_up(case_id)
            raise
        raise self.retry(countdown=backoff(self.request.retries)) from None


@platform_task(queue="default", retry_for=(OperationalError, InterfaceError))
def purge_expired_pacs_links(self) -> dict:
    """Celery beat, daily: erase the protected mapping past its retention."""
    from apps.pacs.services import purge_expired_links

    return {"erased": purge_expired_links()}


@platform_task(queue="default", retry_for=(OperationalError, InterfaceError))
def pull_dicomweb_studies(self) -> dict:
    """Celery beat, every ``CXR_PACS_PULL_SECONDS`` where ``CXR_PACS_DICOMWEB_URL`` is set:
    the new chest X-ray studies of the DICOMweb server become cases
    (``apps.pacs.dicomweb``)."""
    from apps.pacs.dicomweb import pull_new_studies

    return pull_new_studies()

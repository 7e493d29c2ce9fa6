"""Celery tasks of sites: the periodic drift check."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from cxrplatform.celery import platform_task


@platform_task(queue="default", retry_for=(OperationalError, InterfaceError))
def check_drift(self) -> dict:
    """Celery beat, every ``CXR_DRIFT_CHECK_SECONDS``: each site's rolling window of the
    production classifier against its reference (``apps.sites.drift.check_all``)."""
    from apps.sites.drift import check_all

    return check_all()

"""Celery tasks for cases: thin wrappers that take primary keys.

A case's jobs (predictions, CT segmentations) run through the one job task,
``cxrplatform.jobs.run_job``; this module holds the cases' housekeeping.
"""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from cxrplatform.celery import platform_task


@platform_task(queue="default", retry_for=(OperationalError, InterfaceError))
def purge_deleted_cases(self) -> dict:
    """Celery beat, every ``CXR_PURGE_CHECK_SECONDS``: files and rows of cases deleted more
    than ``CXR_DELETED_CASE_RETENTION_DAYS`` ago (``apps.cases.retention``)."""
    from apps.cases.retention import purge_deleted_cases as purge

    return purge()

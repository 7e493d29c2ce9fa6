"""Celery tasks for cases: thin wrappers that take primary keys.

Nothing here imports TensorFlow at module level: the worker imports this
module at start. ``Prediction.job_kind`` names ``classify_image`` and
``Segmentation.job_kind`` ``segment_slice`` (queue ``segmentation``); services
queue it by that name (``cxrplatform.jobs.enqueue_job``) and the one beat
sweeper (``cxrplatform.jobs.sweep_stuck_jobs``) requeues or fails it.
"""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from cxrplatform.celery import platform_task


@platform_task(queue="inference", retry_for=(OperationalError, InterfaceError))
def classify_image(self, *, prediction_id: int) -> None:
    from apps.cases.inference import run_prediction

    run_prediction(prediction_id=prediction_id)


@platform_task(queue="segmentation", retry_for=(OperationalError, InterfaceError))
def segment_slice(self, *, segmentation_id: int) -> None:
    from apps.cases.segmentation import run_segmentation

    run_segmentation(segmentation_id=segmentation_id)


@platform_task(queue="default", retry_for=(OperationalError, InterfaceError))
def purge_deleted_cases(self) -> dict:
    """Celery beat, every ``CXR_PURGE_CHECK_SECONDS``: files and rows of cases deleted more
    than ``CXR_DELETED_CASE_RETENTION_DAYS`` ago (``apps.cases.retention``)."""
    from apps.cases.retention import purge_deleted_cases as purge

    return purge()

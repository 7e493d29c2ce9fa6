"""Celery tasks for cases: thin wrappers that take primary keys.

Nothing here imports TensorFlow at module level: the worker imports this
module at start. ``Prediction.job_kind`` names ``classify_image``; services
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

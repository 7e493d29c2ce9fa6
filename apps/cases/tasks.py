"""Celery tasks for cases: thin wrappers that take primary keys.

Nothing here imports TensorFlow at module level: the web process imports
this module to enqueue.
"""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from cxrplatform.celery import platform_task


@platform_task(queue="inference", retry_for=(OperationalError, InterfaceError))
def classify_image(self, *, prediction_id: int) -> None:
    from apps.cases.inference import run_prediction

    run_prediction(prediction_id=prediction_id)


@platform_task(queue="default", retry_for=(OperationalError, InterfaceError))
def sweep_stuck_predictions(self) -> dict[str, int]:
    from apps.cases.services import sweep_stuck_predictions as sweep

    return sweep()

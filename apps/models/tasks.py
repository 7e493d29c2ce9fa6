"""Celery tasks of the model registry: the retraining schedule.

Training runs themselves run through the one job task, ``cxrplatform.jobs.run_job``
(queue ``training``). Tasks import services, never the other way round.
"""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from cxrplatform.celery import platform_task


@platform_task(queue="default", retry_for=(OperationalError, InterfaceError))
def retrain_if_enough_labels(self) -> int | None:
    from apps.models.services import retrain_if_enough_labels as check

    run = check()
    return run.pk if run else None

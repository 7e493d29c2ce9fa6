"""Celery tasks of the model registry: training (queue ``training``) and its schedule.

``TrainingRun.job_kind`` names ``train_model``; the one beat sweeper
(``cxrplatform.jobs.sweep_stuck_jobs``) requeues or fails runs. Tasks import
services, never the other way round (services queue tasks by name).
"""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from cxrplatform.celery import platform_task


@platform_task(queue="training", max_retries=1, retry_for=(OperationalError, InterfaceError))
def train_model(self, *, run_id: int) -> None:
    from apps.models.training import run_training

    run_training(run_id=run_id)


@platform_task(queue="default", retry_for=(OperationalError, InterfaceError))
def retrain_if_enough_labels(self) -> int | None:
    from apps.models.services import retrain_if_enough_labels as check

    run = check()
    return run.pk if run else None

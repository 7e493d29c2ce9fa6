"""Celery tasks for explanations and inspections (queue ``explain``); thin, keyed by
primary key. ``Explanation.job_kind`` and ``Inspection.job_kind`` name them; the one
beat sweeper (``cxrplatform.jobs.sweep_stuck_jobs``) requeues or fails their jobs."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from cxrplatform.celery import platform_task


@platform_task(queue="explain", retry_for=(OperationalError, InterfaceError))
def explain_image(self, *, explanation_id: int) -> None:
    from apps.explain.jobs import run_explanation

    run_explanation(explanation_id=explanation_id)


@platform_task(queue="explain", retry_for=(OperationalError, InterfaceError))
def inspect_model(self, *, inspection_id: int) -> None:
    from apps.explain.inspector import run_inspection

    run_inspection(inspection_id=inspection_id)

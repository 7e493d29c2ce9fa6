"""Celery task for sample grids (queue ``explain``: short TensorFlow jobs); thin, keyed by
primary key. ``SampleGrid.job_kind`` names it; the beat sweeper requeues or fails it."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from cxrplatform.celery import platform_task


@platform_task(queue="explain", retry_for=(OperationalError, InterfaceError))
def make_sample_grid(self, *, grid_id: int) -> None:
    from apps.generator.jobs import run_sample_grid

    run_sample_grid(grid_id=grid_id)

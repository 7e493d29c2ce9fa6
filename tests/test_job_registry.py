"""Every job kind is a registration: a concrete Job declares its task (and so its queue
and limits), and the one beat sweeper and ``enqueue_job`` serve every registered kind.

A new kind (generation, ...) that forgets its declaration fails here
and in ``manage.py check`` (``jobs.E001``), never silently in production.
"""

from __future__ import annotations

import inspect

import pytest
from django.apps import apps
from django.db import models
from django.test.utils import isolate_apps

from cxrplatform.celery import app
from cxrplatform.jobs import (
    Job,
    JobKind,
    check_every_job_is_registered,
    registered_jobs,
    registered_task,
    sweep_stuck_jobs,
)


def _concrete_job_models() -> dict[str, type[Job]]:
    return {
        model._meta.label_lower: model
        for model in apps.get_models()
        if issubclass(model, Job) and not model._meta.proxy
    }


def test_every_concrete_job_model_is_registered():
    concrete = _concrete_job_models()
    assert set(concrete) >= {
        "cases.prediction",
        "cases.segmentation",
        "explain.explanation",
        "explain.inspection",
        "registry.trainingrun",
    }
    assert registered_jobs() == concrete


@pytest.mark.parametrize("label", sorted(_concrete_job_models()))
def test_each_job_kinds_task_is_registered_on_its_queue_and_takes_the_primary_key(label):
    kind = registered_jobs()[label].job_kind
    task = registered_task(kind.task)
    assert app.amqp.router.route({}, task.name)["queue"].name == kind.queue
    assert task.time_limit == kind.hard_limit_seconds
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
    parameter = inspect.signature(task.run).parameters[kind.pk_kwarg]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.django_db
def test_the_one_beat_sweeper_sweeps_every_concrete_job_model():
    beat_tasks = [entry["task"] for entry in app.conf.beat_schedule.values()]
    assert beat_tasks.count(sweep_stuck_jobs.name) == 1
    assert [name for name in beat_tasks if "sweep" in name] == [sweep_stuck_jobs.name]
    swept = sweep_stuck_jobs.apply().get()
    assert swept == {label: {"failed": 0, "requeued": 0} for label in _concrete_job_models()}


@isolate_apps("apps.cases")
def test_a_concrete_job_without_a_job_kind_fails_the_system_check():
    class Generation(Job):
        image = models.ForeignKey("cases.CaseImage", on_delete=models.CASCADE)

        class Meta:
            app_label = "cases"

    config = Generation._meta.apps.get_app_config("cases")
    errors = check_every_job_is_registered(app_configs=[config])
    assert [(error.id, error.obj) for error in errors] == [("jobs.E001", Generation)]
    assert "Generation is a Job but declares no job_kind" in errors[0].msg
    assert "cases.generation" not in registered_jobs()
    assert check_every_job_is_registered() == []  # the project's own kinds all declare one


def test_a_job_kind_on_an_unknown_queue_is_refused():
    with pytest.raises(ValueError, match="Unknown queue 'gpu'"):
        JobKind(task="apps.cases.tasks.classify_image", queue="gpu", pk_kwarg="prediction_id")

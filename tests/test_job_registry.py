"""Every job kind is a registration: a concrete Job declares its runner and its queue (and
so its limits); the one task ``run_job``, the one beat sweeper and ``enqueue_job`` serve
every registered kind.

A new kind (generation, ...) that forgets its declaration fails here
and in ``manage.py check`` (``jobs.E001``), never silently in production.
"""

from __future__ import annotations

from unittest import mock

import pytest
from django.apps import apps
from django.conf import settings
from django.db import models
from django.test.utils import isolate_apps

from cxrplatform.celery import app
from cxrplatform.jobs import (
    LEGACY_TASKS,
    Job,
    JobKind,
    JobRunner,
    check_every_job_is_registered,
    registered_jobs,
    registered_task,
    run_job,
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
        "generator.samplegrid",
        "registry.trainingrun",
    }
    assert registered_jobs() == concrete


@pytest.mark.parametrize("label", sorted(_concrete_job_models()))
def test_each_job_kind_is_sent_to_its_queue_with_that_queues_limits_by_the_one_task(label):
    kind = registered_jobs()[label].job_kind
    assert kind is not None
    assert issubclass(kind.runner_class(), JobRunner)
    with mock.patch.object(app, "send_task") as send:
        run_job.apply_async(kwargs={"job": label, "pk": 7})
    (name, _args, kwargs), options = send.call_args.args[:3], send.call_args.kwargs
    assert name == run_job.name == "cxrplatform.jobs.run_job"
    assert kwargs == {"job": label, "pk": 7}
    assert options["queue"] == kind.queue
    assert options["time_limit"] == kind.hard_limit_seconds
    assert options["soft_time_limit"] == int(kind.hard_limit_seconds * 0.9)
    assert options["shadow"] == f"cxrplatform.jobs.run_job:{label}"
    assert run_job.acks_late is True
    assert run_job.reject_on_worker_lost is True


def test_a_retried_message_keeps_its_kinds_queue_and_limits():
    # What Celery's retry sends: the original options, time limits included.
    with mock.patch.object(app, "send_task") as send:
        run_job.apply_async(
            kwargs={"job": "registry.trainingrun", "pk": 3},
            time_limit=None,
            soft_time_limit=None,
            exchange="cxr",
            routing_key="training",
        )
    options = send.call_args.kwargs
    assert options["queue"] == "training"
    assert options["time_limit"] == settings.CXR_TASK_HARD_LIMITS["training"]


def test_only_registered_kinds_can_be_queued():
    with pytest.raises(LookupError, match=r"No job kind is registered as 'cases\.generation'"):
        run_job.apply_async(kwargs={"job": "cases.generation", "pk": 1})


def test_training_retries_a_database_outage_once_and_the_others_three_times():
    kinds = {label: model.job_kind for label, model in registered_jobs().items()}
    retries = {label: kind.max_retries for label, kind in kinds.items() if kind is not None}
    assert len(retries) == len(kinds)
    assert retries.pop("registry.trainingrun") == 1
    assert set(retries.values()) == {3}


@pytest.mark.parametrize("name", sorted(LEGACY_TASKS))
def test_messages_queued_under_a_kinds_old_task_name_still_run(name):
    label, keyword, queue = LEGACY_TASKS[name]
    assert label in registered_jobs()
    kind = registered_jobs()[label].job_kind
    assert kind is not None
    assert kind.queue == queue
    task = registered_task(name)
    assert task.acks_late is True
    assert task.time_limit == settings.CXR_TASK_HARD_LIMITS[queue]
    with mock.patch("cxrplatform.jobs.run_job_now") as run_now:
        task.apply(kwargs={keyword: 5}).get()
    run_now.assert_called_once_with(registered_jobs()[label], 5)


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
        JobKind(runner="apps.cases.inference.PredictionRunner", queue="gpu")

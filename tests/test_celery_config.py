import pytest
from django.conf import settings

from apps.cases.tasks import purge_deleted_cases
from cxrplatform.celery import QUEUES, app
from cxrplatform.jobs import registered_task, run_job, sweep_stuck_jobs


def _project_tasks() -> list:
    registered_task("apps.models.tasks.retrain_if_enough_labels")  # every tasks module imported
    return [task for name, task in sorted(app.tasks.items()) if name.startswith(("apps.", "cxr"))]


def test_every_project_task_acks_late_and_is_requeued_when_its_worker_is_lost():
    tasks = _project_tasks()
    assert {t.name for t in tasks} >= {
        "cxrplatform.jobs.run_job",
        "apps.cases.tasks.purge_deleted_cases",
        "apps.models.tasks.retrain_if_enough_labels",
        "cxrplatform.jobs.sweep_stuck_jobs",
    }
    for task in tasks:
        assert task.acks_late is True, task.name
        assert task.reject_on_worker_lost is True, task.name


# The job kinds' queues and limits: tests/test_job_registry.py (one task, run_job, sends
# each kind to its queue with that queue's limits).
@pytest.mark.parametrize(
    ("name", "queue"),
    [
        ("apps.cases.tasks.purge_deleted_cases", "default"),
        ("apps.models.tasks.retrain_if_enough_labels", "default"),
        ("cxrplatform.jobs.sweep_stuck_jobs", "default"),
    ],
)
def test_each_task_runs_on_its_queue_with_that_queues_time_limits(name, queue):
    task = registered_task(name)
    assert app.amqp.router.route({}, task.name)["queue"].name == queue
    hard = settings.CXR_TASK_HARD_LIMITS[queue]
    assert task.time_limit == hard
    assert task.soft_time_limit == int(hard * 0.9)


def test_broker_visibility_timeout_exceeds_every_hard_limit():
    timeout = app.conf.broker_transport_options["visibility_timeout"]
    assert timeout > max(settings.CXR_TASK_HARD_LIMITS.values())


def test_each_queue_has_its_own_routing_key_so_a_task_reaches_one_queue():
    keys = {q.name: q.routing_key for q in app.conf.task_queues}
    assert keys == {name: name for name in QUEUES}
    route = app.amqp.router.route({}, purge_deleted_cases.name)
    assert route["queue"].routing_key == "default"
    route = app.amqp.router.route({"queue": "inference"}, run_job.name)
    assert route["queue"].routing_key == "inference"


def test_all_five_queues_are_declared_and_beat_runs_one_sweeper_and_the_retrain_check():
    assert (
        {q.name for q in app.conf.task_queues}
        == set(QUEUES)
        == {"inference", "segmentation", "explain", "training", "default"}
    )
    schedule = app.conf.beat_schedule
    assert {name: entry["task"] for name, entry in schedule.items()} == {
        "sweep-stuck-jobs": sweep_stuck_jobs.name,
        "retrain-when-enough-labels": "apps.models.tasks.retrain_if_enough_labels",
        "purge-deleted-cases": "apps.cases.tasks.purge_deleted_cases",
    }
    assert schedule["sweep-stuck-jobs"]["schedule"] == settings.CXR_STUCK_SWEEP_SECONDS

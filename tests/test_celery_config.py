import os
import subprocess
import sys

import pytest
from django.conf import settings

from apps.cases.tasks import purge_deleted_cases
from cxrplatform.celery import QUEUES, app
from cxrplatform.jobs import registered_task, run_job, sweep_stuck_jobs
from tests.conftest import REPO_ROOT


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
        "check-site-drift": "apps.sites.tasks.check_drift",
        "purge-expired-pacs-links": "apps.pacs.tasks.purge_expired_pacs_links",
    }
    assert schedule["sweep-stuck-jobs"]["schedule"] == settings.CXR_STUCK_SWEEP_SECONDS


RACE = """
import sys, threading
import django
django.setup()
from cxrplatform.jobs import registered_task

names = [
    "apps.models.tasks.retrain_if_enough_labels",
    "apps.cases.tasks.purge_deleted_cases",
    "cxrplatform.jobs.sweep_stuck_jobs",
    "apps.cases.tasks.classify_image",
]
start = threading.Barrier(len(names))
errors = []

def look_up(name):
    start.wait()
    try:
        registered_task(name)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")

threads = [threading.Thread(target=look_up, args=(name,)) for name in names]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors)
sys.exit(1 if errors else 0)
"""


@pytest.mark.slow
def test_the_first_concurrent_task_lookups_of_a_fresh_process_find_every_task(tmp_path):
    """A fresh web process (no task looked up yet) whose first requests look tasks up in
    four threads at once: every lookup finds its task, five processes in a row."""
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="tests.settings", CXR_VAR_DIR=str(tmp_path))
    env.pop("DATABASE_URL", None)
    for _ in range(5):
        result = subprocess.run(
            [sys.executable, "-c", RACE],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

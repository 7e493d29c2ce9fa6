"""A job claimed twice (its message delivered a second time while the first run is still
computing) ends with one result: the run holding the current claim stores its files and
fields; the other stores nothing, leaves no file in storage and says so in the log.

Two real runs in two threads on PostgreSQL, each with its own connection, through the
one runner every kind shares (``run_job_now``). ``Probe`` is a kind made for this test
(an isolated app registry, its table made for the test) whose runner waits, inside
``compute``, until the test lets it finish, so the order of the two runs is the test's.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from django.db import connection, connections, models
from django.test.utils import isolate_apps

from cxrplatform import jobs
from cxrplatform.jobs import Job, JobKind, JobResult, JobRunner, run_job_now
from tests.conftest import stored_files

LABEL = "cases.claimprobe"

# Per run, in claim order: set when it is computing, and what lets it go on.
computing: list[threading.Event] = []
proceed: list[threading.Event] = []
failing: list[bool] = []


class ProbeRunner(JobRunner[Any]):  # Any: the model exists only inside the fixture
    what = "The probe"

    def compute(self, job: Any) -> JobResult:
        run = job.attempts  # 1 for the first claim, 2 for the second
        computing[run - 1].set()
        assert proceed[run - 1].wait(30), "the test never let this run finish"
        if failing[run - 1]:
            raise OSError("the stored image vanished")
        return JobResult(
            fields={"run": run},
            files={
                "mask": ("mask.png", f"mask of run {run}".encode()),
                "heatmap": ("map.npy", f"heatmap of run {run}".encode()),
            },
        )


@pytest.fixture
def probe_model(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent transactions need PostgreSQL (CI runs it)")
    with isolate_apps("apps.cases"):

        class ClaimProbe(Job):
            job_kind = JobKind(runner=f"{__name__}.ProbeRunner", queue="default")

            run = models.PositiveIntegerField(null=True)
            mask = models.FileField(upload_to="probes/", blank=True)
            heatmap = models.FileField(upload_to="probes/", blank=True)

            class Meta:
                app_label = "cases"

    with connection.schema_editor() as editor:
        editor.create_model(ClaimProbe)
    computing[:] = [threading.Event(), threading.Event()]
    proceed[:] = [threading.Event(), threading.Event()]
    failing[:] = [False, False]
    try:
        yield ClaimProbe
    finally:
        for event in proceed:
            event.set()
        with connection.schema_editor() as editor:
            editor.delete_model(ClaimProbe)
        jobs._REGISTRY.pop(LABEL, None)


def _deliver(model, pk: int, errors: list) -> threading.Thread:
    """One delivery of the job's message, run by a worker thread of its own."""

    def run() -> None:
        try:
            run_job_now(model, pk)
        except Exception as exc:  # recorded: the test asserts there is none
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("first_to_finish", [1, 2], ids=["first-claim-ends-first", "second-first"])
@pytest.mark.slow
def test_a_job_claimed_twice_stores_one_result_and_the_loser_leaves_no_file(
    probe_model, media_root, caplog, first_to_finish
):
    caplog.set_level(logging.WARNING, logger="cxrplatform.jobs")
    job = probe_model.objects.create()
    errors: list = []
    first = _deliver(probe_model, job.pk, errors)
    assert computing[0].wait(30)
    # The message is delivered again while the first run computes (redelivered after a
    # visibility timeout, or sent twice): a second worker claims the running job.
    second = _deliver(probe_model, job.pk, errors)
    assert computing[1].wait(30)

    order = [0, 1] if first_to_finish == 1 else [1, 0]
    threads = [first, second]
    for index in order:
        proceed[index].set()
        threads[index].join(30)
        assert not threads[index].is_alive()
    assert errors == []

    job.refresh_from_db()
    assert job.status == "done", job.error
    assert job.run == 2  # the current claim's result, whichever finished first
    assert job.attempts == 2
    with job.mask.open("rb") as fh:
        assert fh.read() == b"mask of run 2"
    with job.heatmap.open("rb") as fh:
        assert fh.read() == b"heatmap of run 2"
    # Storage holds exactly the files the row names: the losing run's are not orphans.
    assert stored_files(media_root) == sorted(
        media_root / name for name in (job.mask.name, job.heatmap.name)
    )
    lost = [r for r in caplog.records if "lost its claim" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in caplog.records]
    assert f"{job.pk}" in lost[0].getMessage()


@pytest.mark.slow
def test_a_run_that_lost_its_claim_and_then_failed_leaves_the_result_alone(
    probe_model, media_root, caplog
):
    """The current claim's outcome stands: the losing run's error is logged, not written
    over the result."""
    caplog.set_level(logging.WARNING, logger="cxrplatform.jobs")
    job = probe_model.objects.create()
    errors: list = []
    first = _deliver(probe_model, job.pk, errors)
    assert computing[0].wait(30)
    second = _deliver(probe_model, job.pk, errors)
    assert computing[1].wait(30)
    proceed[1].set()
    second.join(30)
    failing[0] = True  # the first run's compute fails once it goes on (its file vanished)
    proceed[0].set()
    first.join(30)
    assert errors == []

    job.refresh_from_db()
    assert (job.status, job.error, job.run) == ("done", "", 2)
    assert len(stored_files(media_root)) == 2
    assert any("failed after losing its claim" in r.getMessage() for r in caplog.records)

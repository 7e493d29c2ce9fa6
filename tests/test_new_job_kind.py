"""A new kind of job is its model, its registration and a ``compute`` method.

``Checksum`` is such a kind, made here and nowhere else: a model with one
``job_kind`` line and a runner with one method. Without any other code it is
queued by ``enqueue_job`` onto its queue with that queue's limits, run by the one
task ``run_job``, stored (its files where its field keeps them) and marked done,
swept by the one sweeper and retried by the one retry service; a failure leaves
nothing half-written.

The model lives in an isolated app registry (``isolate_apps``), so the project's
migrations and app registry never see it; its table is created for the test and
dropped after it (hence a transactional test: SQLite cannot change its schema
inside the transaction of an ordinary test).
"""

from __future__ import annotations

import hashlib
from typing import Any
from unittest import mock

import pytest
from django.core.files.storage import FileSystemStorage
from django.db import connection, models, transaction
from django.test.utils import isolate_apps

from apps.accounts.models import AuditEvent
from cxrplatform import jobs
from cxrplatform.celery import app
from cxrplatform.jobs import (
    Job,
    JobKind,
    JobResult,
    JobRunner,
    enqueue_job,
    retry_job,
    run_job,
    sweep_stuck_jobs,
)
from tests.conftest import stored_files

LABEL = "cases.checksum"


class ChecksumRunner(JobRunner[Any]):  # Any: the model exists only inside the fixture
    what = "The checksum"

    def compute(self, job: Any) -> JobResult:
        if job.text == "boom":
            raise ValueError("nothing to hash in a boom")
        digest = hashlib.sha256(job.text.encode()).hexdigest()
        return JobResult(
            fields={"digest": digest},
            files={
                "report": ("report.txt", f"sha256 {digest}\n".encode()),
                "copy": ("copy.txt", job.text.encode()),
            },
        )


@pytest.fixture
def checksum_model(transactional_db):
    with isolate_apps("apps.cases"):

        class Checksum(Job):
            job_kind = JobKind(runner=f"{__name__}.ChecksumRunner", queue="default")

            text = models.TextField()
            digest = models.CharField(max_length=64, blank=True)
            report = models.FileField(upload_to="checksums/", blank=True)
            copy = models.FileField(upload_to="checksums/", blank=True)

            class Meta:
                app_label = "cases"

    with connection.schema_editor() as editor:
        editor.create_model(Checksum)
    try:
        yield Checksum
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Checksum)
        # Registered when its class was made (class_prepared); the project's kinds only
        # once the test is over.
        jobs._REGISTRY.pop(LABEL, None)


@pytest.mark.slow
def test_a_new_kind_is_queued_run_stored_and_swept_by_the_platforms_one_path(
    checksum_model, media_root
):
    job = checksum_model.objects.create(text="chest x-ray")
    assert jobs.registered_jobs()[LABEL] is checksum_model

    with mock.patch.object(app, "send_task") as send:
        with transaction.atomic():
            enqueue_job(job)
            send.assert_not_called()  # sent once this commits
        send.assert_called_once()
    assert send.call_args.args[0] == "cxrplatform.jobs.run_job"
    assert send.call_args.args[2] == {"job": LABEL, "pk": job.pk}
    options = send.call_args.kwargs
    assert (options["queue"], options["time_limit"]) == ("default", 300)
    assert options["shadow"] == f"cxrplatform.jobs.run_job:{LABEL}"

    run_job.apply(kwargs={"job": LABEL, "pk": job.pk}).get()  # what the worker runs
    job.refresh_from_db()
    assert job.status == "done", job.error
    assert job.attempts == 1
    assert job.started_at <= job.finished_at
    digest = hashlib.sha256(b"chest x-ray").hexdigest()
    assert job.digest == digest
    with job.report.open("rb") as fh:
        assert fh.read().decode() == f"sha256 {digest}\n"
    with job.copy.open("rb") as fh:
        assert fh.read() == b"chest x-ray"
    assert job.report.name.startswith("checksums/")

    run_job.apply(kwargs={"job": LABEL, "pk": job.pk}).get()  # a redelivered message
    job.refresh_from_db()
    assert job.attempts == 1  # a finished job is left alone
    assert len(stored_files(media_root)) == 2

    assert sweep_stuck_jobs.apply().get()[LABEL] == {"failed": 0, "requeued": 0}


@pytest.mark.slow
def test_a_failed_compute_is_recorded_and_the_one_retry_service_runs_it_again(
    checksum_model, media_root, clinician
):
    job = checksum_model.objects.create(text="boom")
    run_job.apply(kwargs={"job": LABEL, "pk": job.pk}).get()
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == "ValueError: nothing to hash in a boom"
    assert stored_files(media_root) == []

    checksum_model.objects.filter(pk=job.pk).update(text="fixed")
    with mock.patch.object(app, "send_task") as send:
        retry_job(job, actor=clinician)
    assert send.call_args.args[2] == {"job": LABEL, "pk": job.pk}
    job.refresh_from_db()
    assert job.status == "pending"
    event = AuditEvent.objects.get(action="checksum.retry")
    assert event.before == {"status": "failed", "error": "ValueError: nothing to hash in a boom"}
    run_job.apply(kwargs={"job": LABEL, "pk": job.pk}).get()
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("done", 2)
    assert job.digest == hashlib.sha256(b"fixed").hexdigest()


@pytest.mark.slow
def test_a_failure_while_storing_leaves_no_file_and_no_half_result(checksum_model, media_root):
    job = checksum_model.objects.create(text="chest x-ray")
    real_save = FileSystemStorage.save
    saved: list[str] = []

    def save_then_fail(self, name, content, max_length=None):
        if saved:  # the second file: the disk is full
            raise OSError(28, "No space left on device")
        saved.append(real_save(self, name, content, max_length=max_length))
        return saved[-1]

    with mock.patch.object(FileSystemStorage, "save", save_then_fail):
        run_job.apply(kwargs={"job": LABEL, "pk": job.pk}).get()
    job.refresh_from_db()
    assert job.status == "failed"
    assert "No space left on device" in job.error
    assert (job.digest, job.report.name, job.copy.name) == ("", "", "")
    assert len(saved) == 1  # the first file was written ...
    assert stored_files(media_root) == []  # ... and deleted with the failure

"""Training notifications: when a run ends, every model admin is told on the registry page
(a badge and a list) and by e-mail where they have an address."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from apps.models import notifications, services
from apps.models.datasets import import_reference_dataset
from apps.models.models import ModelVersion, Notification, TrainingRun
from cxrplatform.jobs import run_job_now, sweep_stuck
from tests.conftest import IMAGES
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
BUNDLED_COMPACT = Path(__file__).resolve().parents[2] / "ml" / "bundled" / "cxr-compact.keras"


@pytest.fixture
def admins(db):
    """Two model admins (one without an e-mail address) and a clinician."""
    return {
        "mailed": UserFactory(
            username="admin-mail", email="ada@example.org", roles=["model_admin"]
        ),
        "no_address": UserFactory(username="admin-quiet", email="", roles=["model_admin"]),
        "clinician": UserFactory(username="dr-x", email="dr@example.org", roles=["clinician"]),
    }


@pytest.fixture
def seeded(db, production_model):
    assert import_reference_dataset(IMAGES / "manifest.csv", "generic")["created"] == 18
    return production_model


@pytest.mark.slow
def test_a_finished_run_tells_every_model_admin_in_the_app_and_by_e_mail(
    seeded, admins, settings, login, django_capture_on_commit_callbacks
):
    settings.CXR_TRAINING_EPOCHS = 1
    settings.CXR_AUTO_PROMOTE = False
    with django_capture_on_commit_callbacks(execute=False):
        run = services.start_training_run(requested_by=admins["mailed"])
    with django_capture_on_commit_callbacks(execute=True):
        run_job_now(TrainingRun, run.pk)
    run.refresh_from_db()
    assert run.status == "done", run.error

    rows = Notification.objects.filter(run=run)
    assert {n.recipient for n in rows} == {admins["mailed"], admins["no_address"]}
    gate = run.comparison["gate"]
    kind = "candidate_ready" if gate["passed"] else "gate_refused"
    assert {n.kind for n in rows} == {kind}
    version = run.model_version
    note = rows.get(recipient=admins["mailed"])
    assert version is not None
    assert version.evaluation is not None
    assert note.subject.startswith(f"Training run {run.pk}: candidate #{version.pk}")
    assert f"test macro-F1 {version.evaluation.macro_f1:.3f}" in note.body
    if not gate["passed"]:
        assert gate["reasons"][0] in note.body
    # An absolute link to the run's page, which works from an e-mail client too.
    assert "http://127.0.0.1:8000" + reverse("registry:run", args=[run.pk]) in note.body
    assert gate["summary"] in note.body

    # One e-mail, to the admin with an address; the console backend prints it in the demo.
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ada@example.org"]
    assert mail.outbox[0].subject == "[CXR platform] " + note.subject
    assert note.emailed_at is not None
    assert rows.get(recipient=admins["no_address"]).emailed_at is None

    # The registry page: a badge with the unread count and the list; marking read clears it.
    client = login(admins["mailed"])
    html = client.get(reverse("registry:index")).content.decode()
    assert 'data-unread="1"' in html
    # ... and beside the registry link in the top navigation, on every page.
    elsewhere = client.get(reverse("audit-log")).content.decode()
    assert 'data-nav-unread="1"' in elsewhere
    assert note.subject in html
    response = client.post(reverse("registry:notifications-read"), follow=True)
    html = response.content.decode()
    assert "1 notification marked read." in html
    assert "data-unread" not in html
    assert "data-nav-unread" not in html
    assert note.subject in html  # still listed, no longer new
    # Only the reader's own notifications were marked read.
    assert Notification.objects.get(recipient=admins["no_address"]).read_at is None
    assert not Notification.objects.filter(recipient=admins["clinician"]).exists()


def test_a_run_that_fails_tells_model_admins_why(
    seeded, admins, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        run = services.start_training_run(
            requested_by=admins["mailed"], config={"no_such_option": 1}
        )
    with django_capture_on_commit_callbacks(execute=True):
        run_job_now(TrainingRun, run.pk)
    run.refresh_from_db()
    assert run.status == "failed"
    assert "no_such_option" in run.error
    note = Notification.objects.get(run=run, recipient=admins["mailed"])
    assert note.kind == "failed"
    assert note.subject == f"Training run {run.pk} failed"
    assert "no_such_option" in note.body
    assert [m.subject for m in mail.outbox] == [f"[CXR platform] Training run {run.pk} failed"]


def test_a_run_the_sweeper_gives_up_on_is_notified_once(
    seeded, admins, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        run = services.start_training_run(requested_by=admins["mailed"])
    run.mark_running()
    later = timezone.now() + timedelta(seconds=TrainingRun.job_kind.hard_limit_seconds + 3600)
    with django_capture_on_commit_callbacks(execute=True):
        assert sweep_stuck(TrainingRun, now=later)["failed"] == 1
    note = Notification.objects.get(run=run, recipient=admins["mailed"])
    assert "time limit" in note.body
    # Told once, whatever tells it again (a redelivered message, a second path).
    run.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        notifications.training_ended(run)
    assert Notification.objects.filter(run=run).count() == 2  # two admins, once each
    assert len(mail.outbox) == 1


def test_an_e_mail_that_cannot_be_sent_is_kept_on_the_notification_and_fails_nothing(
    seeded, admins, settings, login, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    with django_capture_on_commit_callbacks(execute=False):
        run = services.start_training_run(requested_by=admins["mailed"], config={"bad": 1})
    with django_capture_on_commit_callbacks(execute=True):
        run_job_now(TrainingRun, run.pk)
    run.refresh_from_db()
    assert run.status == "failed"
    assert "bad" in run.error  # the run's own error, not the mail's
    note = Notification.objects.get(run=run, recipient=admins["mailed"])
    assert note.emailed_at is None
    assert "ConnectionRefusedError" in note.email_error
    html = login(admins["mailed"]).get(reverse("registry:index")).content.decode()
    assert "not e-mailed: ConnectionRefusedError" in html


@pytest.mark.slow
def test_the_message_says_whether_the_gate_passed_and_the_candidate_was_promoted(seeded, admins):
    candidate = services.register_artifact(artifact_path=BUNDLED_COMPACT)
    refused = _done_run(candidate, passed=False, reasons=["macro-F1 is lower."])
    kind, subject, body = notifications._message(refused)
    assert kind == Notification.Kind.GATE_REFUSED
    assert subject.endswith("gate refused")
    assert "The promotion gate refused it: macro-F1 is lower." in body

    ready = _done_run(candidate, passed=True, reasons=[])
    assert notifications._message(ready)[0] == Notification.Kind.CANDIDATE_READY

    services.promote(version=candidate, actor=None, reason="automatic: gate passed")
    promoted = _done_run(ModelVersion.objects.get(pk=candidate.pk), passed=True, reasons=[])
    kind, subject, body = notifications._message(promoted)
    assert kind == Notification.Kind.PROMOTED
    assert "now serves all new predictions" in body
    assert body.endswith("http://127.0.0.1:8000/registry/training-runs/9000/")


def _done_run(version, *, passed, reasons):
    """A run as the training runner leaves it (unsaved: the message reads it, nothing else)."""
    from apps.models.datasets import create_snapshot

    # A made-up pk: the message links to the run's page.
    run = TrainingRun(pk=9000, snapshot=create_snapshot(created_by=None), config={})
    run.status, run.model_version = TrainingRun.Status.DONE, version
    run.comparison = {
        "gate": {"passed": passed, "reasons": reasons},
        "candidate": {"macro_f1": 0.5},
    }
    return run


def test_notifications_are_for_model_admins_only(login, admins):
    url = reverse("registry:notifications-read")
    assert login(admins["clinician"]).post(url).status_code == 403
    assert login(admins["mailed"]).get(url).status_code == 405
    html = login(admins["mailed"]).get(reverse("registry:index")).content.decode()
    assert "No notifications yet." in html
    assert "ada@example.org" in html  # where the e-mails will go


def test_the_demo_prints_the_notification_e_mail_on_the_console(
    seeded, settings, capsys, django_capture_on_commit_callbacks
):
    """The demo's model admin has an address on a reserved domain and the console
    backend (DEBUG=1): the worker's output shows the mail."""
    from apps.accounts.services import create_demo_users

    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    create_demo_users()
    with django_capture_on_commit_callbacks(execute=False):
        run = services.start_training_run(config={"bad": 1})
    with django_capture_on_commit_callbacks(execute=True):
        run_job_now(TrainingRun, run.pk)
    printed = capsys.readouterr().out
    assert f"Subject: [CXR platform] Training run {run.pk} failed" in printed
    assert "To: modeladmin@demo.invalid" in printed

"""Tell model admins that a training run ended: in the app and by e-mail.

Training runs notify model admins. When a run ends (its candidate is ready,
with the promotion gate's verdict and, with ``CXR_AUTO_PROMOTE``, whether it was
promoted; or it failed, by any path: its own error, a time limit, the sweeper), every
active model admin gets a :class:`~apps.models.models.Notification`: the registry page
lists them and counts the unread ones in a badge. Each is also e-mailed to its
recipient when they have an address, through Django's configured backend (the console
in the demo and with ``DEBUG=1``, SMTP from the environment otherwise), after the
transaction commits; a mail that cannot be sent is logged and its error kept on the
notification, and never fails the run.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from apps.accounts.roles import MODEL_ADMIN
from apps.models.models import ModelVersion, Notification, TrainingRun

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "[CXR platform] "


def model_admins() -> QuerySet:
    """Who is told: active users with the model-admin role (superusers have every role)."""
    users = get_user_model().objects.filter(is_active=True)
    return users.filter(Q(groups__name=MODEL_ADMIN) | Q(is_superuser=True)).distinct()


def run_url(run: TrainingRun) -> str:
    """The run's page as an absolute address (``CXR_PUBLIC_URL``): an e-mail is read
    outside the app, where a bare path leads nowhere."""
    return settings.CXR_PUBLIC_URL + reverse("registry:run", args=[run.pk])


def _message(run: TrainingRun) -> tuple[str, str, str]:
    """(kind, subject, body) of a finished run's notification."""
    if run.status == TrainingRun.Status.FAILED:
        return (
            Notification.Kind.FAILED,
            f"Training run {run.pk} failed",
            f"Training run {run.pk} on snapshot {run.snapshot_id} failed: {run.error}\n"
            f"No candidate was registered from it. The run and its log: {run_url(run)}",
        )
    version = run.model_version
    gate = (run.comparison or {}).get("gate") or {}
    candidate = (run.comparison or {}).get("candidate") or {}
    macro_f1 = candidate.get("macro_f1")
    figure = f"test macro-F1 {macro_f1:.3f}" if isinstance(macro_f1, int | float) else ""
    name = f"#{version.pk} {version.name}" if version is not None else "a candidate"
    lines = [
        f"Training run {run.pk} on snapshot {run.snapshot_id} registered {name}"
        + (f" ({figure})." if figure else ".")
    ]
    if version is not None and version.status == ModelVersion.Status.PRODUCTION:
        kind, outcome = Notification.Kind.PROMOTED, "promoted automatically (gate passed)"
        lines.append("The promotion gate passed and it now serves all new predictions.")
    elif gate.get("passed"):
        kind, outcome = Notification.Kind.CANDIDATE_READY, "ready, gate passed"
        lines.append("The promotion gate passed; a model admin may promote it.")
    else:
        kind, outcome = Notification.Kind.GATE_REFUSED, "ready, gate refused"
        reasons = " ".join(gate.get("reasons") or []) or "no reason recorded."
        lines.append(f"The promotion gate refused it: {reasons}")
    summary = gate.get("summary")
    if summary:
        lines.append(summary)
    lines.append(f"The run, its candidate against production: {run_url(run)}")
    return kind, f"Training run {run.pk}: candidate {name} {outcome}", "\n".join(lines)


def training_ended(run: TrainingRun) -> list[Notification]:
    """Notify every model admin that ``run`` ended (done or failed); idempotent.

    Called inside the transaction that finishes the run; the e-mails go out after it
    commits (a rolled-back ending tells nobody).
    """
    if run.status not in (TrainingRun.Status.DONE, TrainingRun.Status.FAILED):
        raise ValueError(f"Training run {run.pk} has not ended ({run.status}).")
    kind, subject, body = _message(run)
    rows = [
        Notification(recipient=user, run=run, kind=kind, subject=subject, body=body)
        for user in model_admins()
    ]
    Notification.objects.bulk_create(rows, ignore_conflicts=True)
    log.info("training run %s ended (%s): %d model admin(s) notified", run.pk, kind, len(rows))
    transaction.on_commit(lambda: send_emails(run_id=run.pk))
    return list(Notification.objects.filter(run=run, kind=kind))


def site_drift(*, subject: str, body: str, link: str) -> list[Notification]:
    """Tell every model admin, in the app and by e-mail (now: call it after the drift
    checks commit), that a site drifts; ``link`` is the site's drift page (a path)."""
    rows = Notification.objects.bulk_create(
        [
            Notification(
                recipient=user,
                kind=Notification.Kind.SITE_DRIFT,
                subject=subject,
                body=body,
                link=link,
            )
            for user in model_admins()
        ]
    )
    send_emails(ids=[row.pk for row in rows])
    return rows


def send_emails(*, run_id: int | None = None, ids: list[int] | None = None) -> int:
    """E-mail the notifications not sent yet (a run's, or these ``ids``) to recipients
    with an address; returns how many were sent. A failure is kept on the notification,
    not raised."""
    sent = 0
    chosen = Q(run_id=run_id) if ids is None else Q(pk__in=ids)
    pending = Notification.objects.filter(chosen, emailed_at__isnull=True, email_error="")
    for notification in pending.select_related("recipient"):
        address = notification.recipient.email
        if not address:
            continue
        try:
            send_mail(
                SUBJECT_PREFIX + notification.subject,
                notification.body,
                settings.DEFAULT_FROM_EMAIL,
                [address],
                fail_silently=False,
            )
        except Exception as exc:  # SMTP down or misconfigured: the run's outcome stands
            log.warning("notification %s not e-mailed: %s", notification.pk, exc)
            Notification.objects.filter(pk=notification.pk).update(
                email_error=f"{type(exc).__name__}: {exc}"[:300]
            )
            continue
        Notification.objects.filter(pk=notification.pk).update(emailed_at=timezone.now())
        sent += 1
    return sent


def for_user(user) -> QuerySet:
    return Notification.objects.filter(recipient=user).select_related("run")


def unread_count(user) -> int:
    return for_user(user).filter(read_at__isnull=True).count()


@transaction.atomic
def mark_all_read(*, user) -> int:
    """Mark the user's unread notifications read; returns how many."""
    return for_user(user).filter(read_at__isnull=True).update(read_at=timezone.now())

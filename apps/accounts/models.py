from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    """Who did what to which object, when, with the state before and after.

    Written by the services (label changes, promotions, rollbacks, training
    runs), never by views, so every path into the product leaves a record.
    Rows are append-only: nothing updates or deletes them.
    """

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Empty for actions of the system itself (Celery beat, gates).",
    )
    action = models.CharField(max_length=50, db_index=True)
    target_type = models.CharField(max_length=50)
    target_id = models.CharField(max_length=50)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-at", "-pk")
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        who = self.actor or "system"
        return f"{self.at:%Y-%m-%d %H:%M} {who} {self.action} {self.target_type}#{self.target_id}"


class PasswordChangeRequired(models.Model):
    """The user must choose a new password before doing anything else (outside DEBUG):
    demo users with their published password, and users a site admin created with a
    password the admin knows. Deleted when the password changes (apps.accounts.passwords)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="password_change_required",
    )
    reason = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user} must change their password ({self.reason})"


def keyed_digest(purpose: str, value: str) -> str:
    """HMAC-SHA256 of ``value`` under ``CXR_PSEUDONYM_KEY``: what an audit event keeps of
    a patient identifier or a free-text note. Whoever holds the key can check later which
    value an event names; without the key a short value (a 7-digit reference) cannot be
    found by hashing every candidate, as it can from a bare SHA-256. ``purpose`` keeps
    the digests of different uses apart."""
    key = settings.CXR_PSEUDONYM_KEY.encode()
    return hmac.new(key, f"audit-{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def note_digest(note: str) -> dict[str, object]:
    """What an audit event keeps of a reader's free-text note: its length and a keyed
    hash, never the text, so that the note does not outlive the image it is about when
    the case is erased (the audit log is never erased)."""
    note = note.strip()
    if not note:
        return {"note_chars": 0}
    return {"note_chars": len(note), "note_hmac": keyed_digest("note", note)}


def record(
    *,
    actor,
    action: str,
    target: models.Model,
    before: dict | None = None,
    after: dict | None = None,
) -> AuditEvent:
    """Append one audit event (call inside the service's transaction)."""
    return AuditEvent.objects.create(
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        action=action,
        target_type=target._meta.label,
        target_id=str(target.pk),
        before=before or {},
        after=after or {},
    )

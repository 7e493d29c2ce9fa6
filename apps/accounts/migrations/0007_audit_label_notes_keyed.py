"""Readers' free-text notes leave the audit log: the label events written before
(``label.create``, ``label.change``, ``label.adjudicate``) keep each note's length and
keyed hash (HMAC-SHA256 with ``CXR_PSEUDONYM_KEY``, as ``apps.accounts.models.note_digest``
writes them now) instead of its text, so that a note does not outlive its image when the
case is erased (the audit log itself is never erased).

One way: the texts are gone (they stay on the verdicts themselves while the case lives).
"""

import hashlib
import hmac

from django.conf import settings
from django.db import migrations

LABEL_ACTIONS = ("label.create", "label.change", "label.adjudicate")


def _digest(note: str) -> dict:
    # The same as apps.accounts.models.note_digest at the time of writing.
    note = (note or "").strip()
    if not note:
        return {"note_chars": 0}
    key = settings.CXR_PSEUDONYM_KEY.encode()
    digest = hmac.new(key, f"audit-note:{note}".encode(), hashlib.sha256).hexdigest()
    return {"note_chars": len(note), "note_hmac": digest}


def _without_note(state: dict) -> dict:
    if not isinstance(state, dict):
        return state
    cleaned = {k: v for k, v in state.items() if k != "note"}
    if "note" in state:
        cleaned.update(_digest(str(state["note"])))
    if isinstance(state.get("verdicts"), list):
        cleaned["verdicts"] = [_without_note(verdict) for verdict in state["verdicts"]]
    return cleaned


def keyed_notes(apps, schema_editor):
    AuditEvent = apps.get_model("accounts", "AuditEvent")
    events = AuditEvent.objects.filter(action__in=LABEL_ACTIONS).only("pk", "before", "after")
    for event in events.iterator():
        before, after = _without_note(event.before), _without_note(event.after)
        if (before, after) != (event.before, event.after):
            AuditEvent.objects.filter(pk=event.pk).update(before=before, after=after)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_site_admin_password_change"),
    ]

    operations = [
        migrations.RunPython(keyed_notes, migrations.RunPython.noop),
    ]

"""Audit events of a request: log-ins, log-outs, failed log-ins and every download of
patient data (an image, its lung mask or outline, a CT slice's masks, an explanation's
overlay, colour layer or raw heatmap).

Services record what they change (``apps.accounts.models.record``); these events are
about *who looked*, so the views and Django's authentication signals write them. Each
carries the client address (the one the throttles and django-axes count) and whether it
came through the web pages or the API. Token issue and revocation are recorded by
``apps.accounts.tokens``, lockouts by ``apps.accounts.lockout``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import models
from django.dispatch import receiver
from django.http import HttpRequest

from apps.accounts.models import AuditEvent, record

# What a download event names, by the kind of file (action "download.<kind>").
DOWNLOAD_KINDS = (
    "image",
    "lung_mask",
    "lung_outline",
    "overlay",
    "heatmap_layer",
    "heatmap",
    "ct_mask",  # a CT slice's mask PNG (API)
    "ct_layer",  # a CT slice's mask as the viewer's coloured layer
)


def request_context(request: HttpRequest | None) -> dict[str, str]:
    """The client address and channel of a request, for an event's ``after``."""
    if request is None:
        return {}
    from apps.accounts.lockout import client_address

    request = getattr(request, "_request", request)  # a DRF Request wraps Django's
    return {
        "address": client_address(request) or "",
        "via": "api" if request.path.startswith("/api/") else "web",
    }


def record_download(request: HttpRequest, *, kind: str, target: models.Model) -> AuditEvent:
    """One event per file served to a user (call once access is granted and the file found)."""
    if kind not in DOWNLOAD_KINDS:
        raise ValueError(f"Unknown download kind {kind!r}; one of {DOWNLOAD_KINDS}.")
    return record(
        actor=request.user,
        action=f"download.{kind}",
        target=target,
        after=request_context(request),
    )


def _account_event(action: str, username: str, request, **extra: Any) -> AuditEvent:
    """An event about an account named by username, which may not exist."""
    username = (username or "")[:150]
    user = get_user_model().objects.filter(username=username).first()
    after = {"username": username, **request_context(request), **extra}
    if user is not None:
        return record(actor=None, action=action, target=user, after=after)
    # No such account: still recorded (someone is guessing), without a target row.
    return AuditEvent.objects.create(
        actor=None,
        action=action,
        target_type=get_user_model()._meta.label,
        target_id="",
        after=after,
    )


@receiver(user_logged_in, dispatch_uid="cxr-audit-login")
def audit_login(sender, request, user, **kwargs) -> None:
    record(actor=user, action="auth.login", target=user, after=request_context(request))


@receiver(user_logged_out, dispatch_uid="cxr-audit-logout")
def audit_logout(sender, request, user, **kwargs) -> None:
    if user is not None:  # logging out without a session: nothing to record
        record(actor=user, action="auth.logout", target=user, after=request_context(request))


@receiver(user_login_failed, dispatch_uid="cxr-audit-login-failed")
def audit_login_failed(sender, credentials, request=None, **kwargs) -> None:
    """Wrong password, unknown user or a locked account, on any log-in page or the token
    endpoint. The password never reaches this (Django masks it in ``credentials``)."""
    _account_event("auth.login_failed", str(credentials.get("username") or ""), request)

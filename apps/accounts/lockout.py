"""Per-account lockout after repeated failed log-ins (django-axes), shared by the web
log-in, the Django admin's log-in and the API's token endpoint.

Axes counts failures per username in the database and refuses the account for
``AXES_COOLOFF_TIME`` once ``AXES_FAILURE_LIMIT`` is reached; the functions here are
the project's side of it: the 429 answer (the API's error body under ``/api/``, a page
elsewhere), the client address (the same one the per-address throttles count), and the
audit event written when an account becomes locked. Imported by
``AccountsConfig.ready`` (the signal receiver), never before the apps are loaded.
"""

from __future__ import annotations

import math

from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth import get_user_model
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from rest_framework.throttling import BaseThrottle

from apps.accounts.models import AuditEvent, record


def _cool_off_seconds(request: HttpRequest) -> int:
    from axes.helpers import get_cool_off

    cool_off = get_cool_off(request)
    return max(1, math.ceil(cool_off.total_seconds())) if cool_off else 0


def lockout_message(seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return (
        "This account is locked after too many failed log-ins. Try again in "
        f"{minutes} minute{'s' if minutes != 1 else ''}, or ask a site admin of your site to "
        "unlock it."
    )


def lockout_response(request: HttpRequest, original_response=None, credentials=None):
    """AXES_LOCKOUT_CALLABLE: a 429 with Retry-After; the API's error body under /api/."""
    seconds = _cool_off_seconds(request)
    message = lockout_message(seconds)
    status = settings.AXES_HTTP_RESPONSE_CODE
    response: HttpResponse
    if request.path.startswith("/api/"):
        body = {"error": {"status": status, "code": "locked_out", "message": message, "fields": {}}}
        response = JsonResponse(body, status=status)
    else:
        response = render(
            request, "registration/locked_out.html", {"message": message}, status=status
        )
    if seconds:
        response["Retry-After"] = str(seconds)
    response["Cache-Control"] = "no-store"
    return response


def client_address(request: HttpRequest) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: the address DRF's throttles count (CXR_NUM_PROXIES)."""
    # DRF's get_ident reads only the request's META: a Django request serves.
    return BaseThrottle().get_ident(request)  # type: ignore[arg-type]


@receiver(user_locked_out, dispatch_uid="cxr-audit-lockout")
def audit_lockout(sender, request, username, ip_address, **kwargs) -> AuditEvent | None:
    """One audit event when an account becomes locked (axes signals every refused
    attempt after the limit; those only extend the lock)."""
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is not None and failures != settings.AXES_FAILURE_LIMIT:
        return None
    username = (username or "")[:150]
    user = get_user_model().objects.filter(username=username).first()
    after = {"username": username, "failures": failures, "address": ip_address or ""}
    if user is not None:
        return record(actor=None, action="auth.locked_out", target=user, after=after)
    # No such account: still recorded (someone is guessing), without a target row.
    return AuditEvent.objects.create(
        actor=None,
        action="auth.locked_out",
        target_type=get_user_model()._meta.label,
        target_id="",
        after=after,
    )

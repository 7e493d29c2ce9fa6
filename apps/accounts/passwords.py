"""Password change and reset (Django's own views, audited), and the forced change.

* Every user changes their password at ``/account/password/`` (Django's
  ``PasswordChangeView``; ``AUTH_PASSWORD_VALIDATORS`` apply). A change ends the user's
  other sessions (Django) and revokes their API tokens (``apps.accounts.tokens``).
* A forgotten password is reset by e-mail (``/account/password/reset/``: a one-time link
  valid ``PASSWORD_RESET_TIMEOUT``; the console backend in the demo, SMTP from the
  environment otherwise). The request page answers the same whether or not the address
  is known, and its POSTs are throttled per client address like the log-in.
* A user marked :class:`~apps.accounts.models.PasswordChangeRequired` (demo users, whose
  passwords are published; users a site admin created with a password the admin knows)
  gets, outside DEBUG, only the password change page and log-out until they change it;
  the API refuses them tokens (``apps.accounts.tokens.issue_token``).

Audit events: ``auth.password_changed``, ``auth.password_reset_requested`` (one per
matching account; nothing when no account matches), ``auth.password_reset``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import PasswordResetForm
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.urls import reverse, reverse_lazy

from apps.accounts.audit import request_context
from apps.accounts.models import PasswordChangeRequired, record

PASSWORD_CHANGE_REQUIRED = "password_change_required"  # noqa: S105 - an error code


def require_password_change(user: Any, *, reason: str) -> None:
    """Mark ``user``: outside DEBUG they change their password before anything else."""
    PasswordChangeRequired.objects.update_or_create(user=user, defaults={"reason": reason})


def must_change_password(user: Any) -> bool:
    if not getattr(user, "is_authenticated", False):
        return False
    cached = getattr(user, "_cxr_must_change_password", None)
    if cached is None:
        cached = PasswordChangeRequired.objects.filter(user=user).exists()
        user._cxr_must_change_password = cached
    return cached


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="cxr-password-changed")
def clear_mark_on_password_change(sender, instance, created, **kwargs) -> None:
    """Any path that sets a new password (the change page, a reset, the admin,
    ``changepassword``) lifts the mark (``set_password`` leaves the raw password on
    ``_password`` until the save)."""
    if created or getattr(instance, "_password", None) is None:
        return
    PasswordChangeRequired.objects.filter(user=instance).delete()
    instance._cxr_must_change_password = False


class PasswordChangeRequiredMiddleware:
    """Outside DEBUG, a marked user reaches only the password change pages and log-out:
    pages redirect there, the API answers 403 ``password_change_required``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if settings.DEBUG or not must_change_password(request.user):
            return self.get_response(request)
        allowed = {reverse("password_change"), reverse("password_change_done"), reverse("logout")}
        if request.path_info in allowed:
            return self.get_response(request)
        message = "Choose a new password before you go on: yours was set by someone else."
        if request.path_info.startswith("/api/"):
            body = {
                "error": {
                    "status": 403,
                    "code": PASSWORD_CHANGE_REQUIRED,
                    "message": f"{message} Change it on the web: {reverse('password_change')}",
                    "fields": {},
                }
            }
            return JsonResponse(body, status=403)
        messages.warning(request, message)
        return redirect("password_change")


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "registration/password_change_form.html"
    success_url = reverse_lazy("password_change_done")

    def form_valid(self, form) -> HttpResponse:
        response = super().form_valid(form)
        user = self.request.user
        record(
            actor=user,
            action="auth.password_changed",
            target=user,  # type: ignore[arg-type]
            after=request_context(self.request),
        )
        return response


class AuditedPasswordResetForm(PasswordResetForm):
    """Django's form; each account the address matches is audited as it is mailed."""

    request: HttpRequest | None = None

    def get_users(self, email: str) -> Iterator[Any]:
        for user in super().get_users(email):
            record(
                actor=None,
                action="auth.password_reset_requested",
                target=user,
                after=request_context(self.request),
            )
            yield user


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "registration/password_reset_form.html"
    email_template_name = "registration/password_reset_email.txt"
    subject_template_name = "registration/password_reset_subject.txt"
    form_class = AuditedPasswordResetForm
    success_url = reverse_lazy("password_reset_done")

    def form_valid(self, form) -> HttpResponse:
        form.request = self.request
        return super().form_valid(form)


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "registration/password_reset_confirm.html"
    success_url = reverse_lazy("password_reset_complete")

    def form_valid(self, form) -> HttpResponse:
        response = super().form_valid(form)
        record(
            actor=form.user,
            action="auth.password_reset",
            target=form.user,
            after=request_context(self.request),
        )
        return response

"""API tokens (django-rest-knox): issue, list, revoke; every change audited.

Knox keeps only a SHA-512 digest of each token and the first 15 characters
(``token_key``), which name a token to its owner (listing, revocation, the audit log)
without being enough to use it. A user may hold several tokens (one per tool); each
expires ``REST_KNOX["TOKEN_TTL"]`` after it was issued, and a password change revokes
them all, as it ends the user's web sessions.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.utils import timezone
from knox.models import AuthToken

from apps.accounts.models import record


def _event(*, actor, action: str, user, token: AuthToken, **extra: Any) -> None:
    after = {
        "token": token.token_key,
        "expiry": token.expiry.isoformat() if token.expiry else None,
        **extra,
    }
    record(actor=actor, action=action, target=user, after=after)


def active_tokens(user):
    """The user's tokens that still work, newest first (expired ones are deleted)."""
    AuthToken.objects.filter(user=user, expiry__lt=timezone.now()).delete()
    return AuthToken.objects.filter(user=user).order_by("-created", "token_key")


@transaction.atomic
def issue_token(*, user) -> tuple[AuthToken, str]:
    """A new token for ``user``: the row and the token itself, shown once, never stored.

    Outside DEBUG a user who must change their password (apps.accounts.passwords) gets
    none until they have: PermissionDenied (the API answers 403)."""
    from apps.accounts.passwords import must_change_password

    if not settings.DEBUG and must_change_password(user):
        raise PermissionDenied(
            "Change your password on the web (/account/password/) before you obtain an "
            "API token: it was set by someone else."
        )
    AuthToken.objects.filter(user=user, expiry__lt=timezone.now()).delete()
    token, key = AuthToken.objects.create(user=user)
    _event(actor=user, action="token.issued", user=user, token=token)
    return token, key


@transaction.atomic
def revoke_token(*, token: AuthToken, actor, reason: str = "revoked by its owner") -> None:
    _event(actor=actor, action="token.revoked", user=token.user, token=token, reason=reason)
    token.delete()


@transaction.atomic
def revoke_all_tokens(*, user, actor, reason: str) -> int:
    tokens = list(AuthToken.objects.filter(user=user))
    for token in tokens:
        revoke_token(token=token, actor=actor, reason=reason)
    return len(tokens)


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="cxr-revoke-tokens")
def revoke_tokens_on_password_change(sender, instance, created, **kwargs) -> None:
    """``set_password`` leaves the raw password on ``_password`` until the save after it
    (Django's own hash upgrades at log-in clear it first, so they revoke nothing): any path
    that changes a password (admin, ``changepassword``, a reset) revokes every token."""
    if created or getattr(instance, "_password", None) is None:
        return
    revoke_all_tokens(user=instance, actor=None, reason="password changed")

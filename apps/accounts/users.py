"""Accounts for site administrators: create or invite users, assign roles, deactivate.

Services (keyword-only, atomic, audited) for the users page (``apps.accounts.user_views``).
Who may: superusers and the ``site_admin`` role. A site admin who is not a superuser
cannot change a superuser, nobody deactivates themselves (so the last one cannot lock
everyone out by mistake), nobody changes their own roles (a site admin who gave
themselves ``model_admin`` or ``annotator`` would reach patient data with no second
person involved; another site admin, or a superuser in the Django admin, does it), and
superuser status is the Django admin's business, never this page's.

Roles are groups, read on every request (``apps.accounts.roles.user_roles`` caches them
on the request's user object only), so a change takes effect on that user's next
request. A deactivated user's sessions stop working at their next request (Django's
``ModelBackend`` refuses inactive users) and their API tokens are revoked.

A site admin manages the accounts of their own site only (``apps.sites``): a new account
joins its creator's site; superusers manage every site's.

Audit events (target: the user): ``user.create``, ``user.invite``, ``user.roles``
(before and after), ``user.deactivate``, ``user.reactivate``; ``site.member`` when a new
account joins a site other than the default.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import PermissionDenied
from django.core.mail import send_mail
from django.db import transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from apps.accounts.models import record
from apps.accounts.passwords import require_password_change
from apps.accounts.roles import ROLES


def roles_of(user: Any) -> list[str]:
    """The user's roles as groups (superusers: every role, implicitly)."""
    names = {group.name for group in user.groups.all()}
    return [role for role in ROLES if role in names]


def _check_may_manage(actor: Any, user: Any) -> None:
    from apps.sites.services import manages

    if user.is_superuser and not actor.is_superuser:
        raise PermissionDenied("Only a superuser can change a superuser's account.")
    if not manages(actor, user):
        raise PermissionDenied("You manage only the accounts of your own site.")


def invitation_link(request: HttpRequest, user: Any) -> str:
    """A one-time link to choose a password (Django's password reset token)."""
    path = reverse(
        "password_reset_confirm",
        kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": default_token_generator.make_token(user),
        },
    )
    return request.build_absolute_uri(path)


def send_invitation(*, request: HttpRequest, actor: Any, user: Any) -> None:
    """E-mail ``user`` a link to choose their password (valid PASSWORD_RESET_TIMEOUT)."""
    if not user.email:
        raise ValueError("This user has no e-mail address to send an invitation to.")
    hours = settings.PASSWORD_RESET_TIMEOUT // 3600
    body = render_to_string(
        "accounts/invitation_email.txt",
        {"user": user, "link": invitation_link(request, user), "hours": hours, "actor": actor},
    )
    send_mail(
        "Your CXR platform account",
        body,
        settings.DEFAULT_FROM_EMAIL,
        [user.email],
        fail_silently=False,
    )
    record(actor=actor, action="user.invite", target=user, after={"valid_hours": hours})


@transaction.atomic
def create_user(
    *,
    request: HttpRequest,
    actor: Any,
    username: str,
    email: str = "",
    first_name: str = "",
    last_name: str = "",
    roles: list[str],
    password: str = "",
) -> Any:
    """A new account with ``roles``. With ``password`` the user must change it at their
    first log-in; without, they are e-mailed an invitation to choose one."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"Unknown roles: {sorted(unknown)}")
    if not password and not email:
        raise ValueError("Give an e-mail address for the invitation, or an initial password.")
    user = get_user_model().objects.create_user(
        username=username,
        email=email,
        first_name=first_name,
        last_name=last_name,
        password=password or None,  # None: an unusable password until the invitation
    )
    user.groups.set(Group.objects.filter(name__in=roles))
    from apps.sites.services import set_site, site_of

    set_site(actor=actor, user=user, site=site_of(actor))  # the creator's site
    record(
        actor=actor,
        action="user.create",
        target=user,
        after={"roles": sorted(roles), "invited": not password},
    )
    if password:
        require_password_change(user, reason="set by a site admin")
    else:
        send_invitation(request=request, actor=actor, user=user)
    return user


@transaction.atomic
def set_roles(*, actor: Any, user: Any, roles: list[str]) -> bool:
    """Give ``user`` exactly ``roles``; False when nothing changed."""
    _check_may_manage(actor, user)
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"Unknown roles: {sorted(unknown)}")
    if user.pk == actor.pk:
        raise PermissionDenied(
            "You cannot change your own roles: another site admin must do it, so that no "
            "one gives themselves access to patient data alone."
        )
    before = roles_of(user)
    after = [role for role in ROLES if role in roles]
    if after == before:
        return False
    user.groups.remove(*Group.objects.filter(name__in=ROLES).exclude(name__in=after))
    user.groups.add(*Group.objects.filter(name__in=after))
    record(
        actor=actor,
        action="user.roles",
        target=user,
        before={"roles": before},
        after={"roles": after},
    )
    return True


@transaction.atomic
def set_active(*, actor: Any, user: Any, active: bool) -> bool:
    """Deactivate (sessions end, API tokens revoked) or reactivate; False when unchanged."""
    from apps.accounts.tokens import revoke_all_tokens

    _check_may_manage(actor, user)
    if user.pk == actor.pk and not active:
        raise PermissionDenied("You cannot deactivate your own account.")
    if user.is_active == active:
        return False
    user.is_active = active
    user.save(update_fields=["is_active"])
    record(actor=actor, action="user.reactivate" if active else "user.deactivate", target=user)
    if not active:
        revoke_all_tokens(user=user, actor=actor, reason="account deactivated")
    return True

"""Role and demo-user set-up, shared by the data migration and `seed_demo`."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from apps.accounts.roles import CLINICIAN, ROLE_PERMISSIONS, ROLES


def sync_role_groups(
    group_model: Any, permission_model: Any, mapping: dict[str, tuple[str, ...]] | None = None
) -> None:
    """Create the role groups and give each exactly its permissions.

    Takes the model classes so data migrations can pass their historical
    models, and a frozen ``mapping`` (the permissions as they were when the
    migration was written). Raises if a listed permission does not exist, so
    a renamed model cannot silently strip a role of its rights.
    """
    mapping = ROLE_PERMISSIONS if mapping is None else mapping
    # The roles of the mapping: an older migration's frozen mapping lacks later roles.
    for role in (role for role in ROLES if role in mapping):
        group, _ = group_model.objects.get_or_create(name=role)
        permissions = []
        for dotted in mapping[role]:
            app_label, codename = dotted.split(".")
            try:
                permissions.append(
                    permission_model.objects.get(
                        content_type__app_label=app_label, codename=codename
                    )
                )
            except permission_model.DoesNotExist:
                raise LookupError(f"Permission {dotted} for role {role} does not exist.") from None
        group.permissions.set(permissions)


DEMO_PASSWORD_SUFFIX = "-demo-pass"  # noqa: S105 - demo users only, documented


@transaction.atomic
def create_demo_users() -> list[tuple[str, str, str]]:
    """One user per role (and a second clinician and annotator) with known passwords;
    idempotent. Every role of ``ROLES`` has one, the site admin (users and roles) too.

    Returns (username, password, role) rows. Demo only: the passwords are in
    the README.
    """
    from django.contrib.auth.models import Group, Permission

    from apps.accounts.passwords import require_password_change

    sync_role_groups(Group, Permission)
    user_model = get_user_model()
    created = []
    for username, role in (
        ("clinician", CLINICIAN),
        ("clinician2", CLINICIAN),
        ("annotator", "annotator"),
        ("annotator2", "annotator"),
        ("adjudicator", "adjudicator"),
        ("modeladmin", "model_admin"),
        ("siteadmin", "site_admin"),
        ("radiologist", "radiologist"),
    ):
        password = f"{username}{DEMO_PASSWORD_SUFFIX}"
        user, _ = user_model.objects.get_or_create(username=username)
        user.set_password(password)
        # An address on a reserved domain, so the demo's console backend shows the mail
        # (training notifications, password resets); nothing can be delivered there.
        user.email = user.email or f"{username}@demo.invalid"
        user.save()
        user.groups.set([Group.objects.get(name=role)])
        # The password is published: outside DEBUG the user must change it first.
        require_password_change(user, reason="demo password")
        created.append((username, password, role))
    return created

"""Roles are Django groups; this module is the one place that names them.

Access is deny-by-default: every view states the roles it admits through
``role_required`` (web) and the matching DRF permission (API, later issue).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase

CLINICIAN = "clinician"
ANNOTATOR = "annotator"
MODEL_ADMIN = "model_admin"
# Decides disputed images under the "adjudication" agreement policy (a senior reader;
# apps.cases.labelling.adjudicate). Sees the images that have verdicts, never the model's.
ADJUDICATOR = "adjudicator"
# Manages accounts: invites and creates users, assigns roles, deactivates
# (apps.accounts.users). Superusers have every role.
SITE_ADMIN = "site_admin"
# Reads the studies of their own site from a worklist ordered by the model's priority,
# with the patients' identifiers (audited), and signs reports (apps.reading). Never sees
# another site's cases.
RADIOLOGIST = "radiologist"
ROLES = (CLINICIAN, ANNOTATOR, MODEL_ADMIN, ADJUDICATOR, SITE_ADMIN, RADIOLOGIST)

# Model permissions each group gets ("app_label.codename"), applied by the
# data migration accounts/0001 and re-applied by `seed_demo`.
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    CLINICIAN: (
        "cases.add_case",
        "cases.view_case",
        "cases.add_caseimage",
        "cases.view_caseimage",
        "cases.view_prediction",
        "explain.add_explanation",
        "explain.view_explanation",
    ),
    ANNOTATOR: (
        "cases.view_caseimage",
        "cases.view_prediction",
        "cases.add_expertlabel",
        "cases.change_expertlabel",
        "cases.view_expertlabel",
        "explain.view_explanation",
    ),
    MODEL_ADMIN: (
        "registry.view_modelversion",
        "registry.add_modelversion",
        "registry.change_modelversion",
        "registry.view_trainingrun",
        "registry.add_trainingrun",
        "registry.view_datasetsnapshot",
        "registry.add_datasetsnapshot",
        "registry.view_referenceimage",
        "registry.add_referenceimage",
        "cases.view_prediction",
        "accounts.view_auditevent",
    ),
    ADJUDICATOR: (
        "cases.view_caseimage",
        "cases.view_expertlabel",
        "cases.add_adjudication",
        "cases.change_adjudication",
        "cases.view_adjudication",
    ),
    SITE_ADMIN: (
        "auth.view_user",
        "auth.add_user",
        "auth.change_user",
        "auth.view_group",
    ),
    RADIOLOGIST: (
        "cases.view_case",
        "cases.view_caseimage",
        "cases.view_prediction",
        "explain.view_explanation",
        "reading.view_report",
        "reading.add_report",
    ),
}


def user_roles(user: Any) -> set[str]:
    if not user.is_authenticated:
        return set()
    if user.is_superuser:
        return set(ROLES)
    cached = getattr(user, "_cxr_roles", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        user._cxr_roles = cached
    return cached


def has_role(user: Any, *roles: str) -> bool:
    return bool(user_roles(user) & set(roles))


def role_required(
    *roles: str,
) -> Callable[[Callable[..., HttpResponseBase]], Callable[..., HttpResponseBase]]:
    """Anonymous users go to the login page; logged-in users without a role get 403."""
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise ValueError(f"role_required needs roles from {ROLES}, got {roles}.")

    def decorator(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, *roles):
                raise PermissionDenied("Your role does not give access to this page.")
            return view(request, *args, **kwargs)

        wrapped.allowed_roles = tuple(roles)  # type: ignore[attr-defined]
        return wrapped

    return decorator


def primary_role(user: Any, candidates: Iterable[str] = ROLES) -> str | None:
    roles = user_roles(user)
    return next((role for role in candidates if role in roles), None)

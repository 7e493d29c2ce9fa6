"""Deny by default: every API view names the roles it admits in ``allowed_roles``."""

from __future__ import annotations

from rest_framework.permissions import BasePermission

from apps.accounts.roles import ROLES, has_role

ANY_AUTHENTICATED = "any authenticated user"


class HasAllowedRole(BasePermission):
    """Admit an authenticated user holding one of ``view.allowed_roles``.

    A view without ``allowed_roles`` admits nobody; ``ANY_AUTHENTICATED``
    (token revocation) admits every logged-in user. Anonymous requests get
    401 (not 403) because the API's first authenticator is the token one.
    Object-level visibility is the views' querysets (``apps.cases.access``),
    so another clinician's case is a 404 as on the web.
    """

    message = "Your role does not give access to this endpoint."

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        roles = getattr(view, "allowed_roles", ())
        if roles == ANY_AUTHENTICATED:
            return True
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"{type(view).__name__}.allowed_roles names unknown roles {unknown}.")
        return bool(roles) and has_role(request.user, *roles)

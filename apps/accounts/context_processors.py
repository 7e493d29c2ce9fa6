from django.http import HttpRequest

from apps.accounts.roles import user_roles


def roles(request: HttpRequest) -> dict[str, object]:
    """Expose the user's roles to templates (navigation shows only what they may open)."""
    return {"user_roles": user_roles(request.user) if hasattr(request, "user") else set()}

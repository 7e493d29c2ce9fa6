from django.http import HttpRequest

from apps.accounts.roles import MODEL_ADMIN, user_roles


def roles(request: HttpRequest) -> dict[str, object]:
    """Expose the user's roles to templates (navigation shows only what they may open),
    and for model admins the number of unread training notifications beside the registry
    link (a callable: counted only where the navigation shows it)."""
    if not hasattr(request, "user"):
        return {"user_roles": set()}
    found = user_roles(request.user)

    def unread_notifications() -> int:
        from apps.models.notifications import unread_count

        return unread_count(request.user) if MODEL_ADMIN in found else 0

    return {"user_roles": found, "nav_unread_notifications": unread_notifications}

"""Training notifications on the registry page: mark them read (model admins).

The list and the unread badge are rendered by ``apps.models.views.registry``; the
work is in ``apps.models.notifications``.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from apps.accounts.roles import MODEL_ADMIN, role_required
from apps.models import notifications


@require_POST
@role_required(MODEL_ADMIN)
def mark_read(request: HttpRequest) -> HttpResponse:
    count = notifications.mark_all_read(user=request.user)
    messages.success(request, f"{count} notification{'s' if count != 1 else ''} marked read.")
    return redirect("registry:index")

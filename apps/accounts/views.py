from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from apps.accounts.roles import CLINICIAN, user_roles


@require_GET
@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Each role lands where its work is; users without a role see why they can do nothing."""
    roles = user_roles(request.user)
    if roles == {CLINICIAN}:
        return redirect("cases:list")
    from apps.models.services import get_production_version

    return render(
        request, "home.html", {"roles": sorted(roles), "production": get_production_version()}
    )

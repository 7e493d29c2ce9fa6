"""What every API view shares: deny by default, binary downloads, the API's 404.

Each app's endpoints are in its own ``api`` package (``apps/<app>/api/views.py``,
``serializers.py``, ``urls.py``); ``apps.api.urls`` puts their routes under ``/api/v1/``.
A view there is thin: it parses input, states the roles it admits (``allowed_roles``),
narrows the queryset to what the user may see (another clinician's case is a 404, as
on the web) and calls the same service as the web page: one create path, one label
path, one promote path. A service's refusal (``cxrplatform.errors.Refused``) becomes a
409 in the exception handler (``apps.api.exceptions``), so no view maps one itself."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.views import APIView

from apps.api.permissions import HasAllowedRole


class RoleView(APIView):
    """Base for every API view: deny by default, admit ``allowed_roles``."""

    permission_classes = [HasAllowedRole]
    allowed_roles: tuple[str, ...] | str = ()


class FileView(RoleView):
    """Binary downloads: never refused for the client's Accept header (errors are JSON)."""

    def perform_content_negotiation(self, request, force=False):
        return super().perform_content_negotiation(request, force=True)


@csrf_exempt  # it changes nothing, and must answer 404 (not a CSRF 403) to any method
def not_found(request, *args, **kwargs) -> JsonResponse:
    """The API's 404 for a URL no endpoint matches, in the API's error body."""
    message = f"No API endpoint at {request.path}."
    body = {"error": {"status": 404, "code": "not_found", "message": message, "fields": {}}}
    return JsonResponse(body, status=404)

"""Absolute links into the API, for the representations and for ``Location`` headers."""

from __future__ import annotations

from django.urls import reverse


def absolute(request, name: str, *args) -> str:
    """The URL of the route ``api:<name>`` with ``args``; absolute when there is a request."""
    url = reverse(f"api:{name}", args=args)
    return request.build_absolute_uri(url) if request is not None else url


def located(request, name: str, pk) -> dict[str, str]:
    """The ``Location`` header of a created (or queued) resource."""
    return {"Location": absolute(request, name, pk)}

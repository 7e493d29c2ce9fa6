"""Project middleware."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.middleware.gzip import GZipMiddleware
from django.utils.cache import add_never_cache_headers


class NoStoreMiddleware:
    """``Cache-Control: no-store`` (with ``private``) on every response that does not set
    its own caching: pages and API responses carry patient data, and neither a shared
    cache nor the browser's disk may keep them. Static files never reach this (WhiteNoise
    answers them earlier in the chain, with their own long-lived caching)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if not response.has_header("Cache-Control"):
            add_never_cache_headers(response)
        return response


class JsonGZipMiddleware(GZipMiddleware):
    """gzip for JSON responses only (the API: a page of 20 cases, ~26 kB, to under a third).

    HTML pages are left alone: they carry the CSRF token next to text a user typed,
    which is what BREACH reads through compression; JSON responses carry no CSRF token.
    Django's own GZipMiddleware does the rest (Accept-Encoding, Vary, ETag weakening,
    random padding against length attacks).
    """

    def process_response(self, request: HttpRequest, response: HttpResponseBase):
        content_type = response.get("Content-Type", "")
        if not content_type.startswith(("application/json", "application/problem+json")):
            return response
        return super().process_response(request, response)

"""Throttles for the endpoints that take a password: API tokens and the web log-in.

Counted per client address in Django's default cache (Redis in production,
so every web process shares the counts; local memory in the embedded demo).
Rates come from ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` at request time,
so tests and deployments can change them without re-importing this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps

from django.http import HttpRequest, HttpResponse
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle


class AddressRateThrottle(SimpleRateThrottle):
    """One counter per (scope, client address), whoever is logged in."""

    scope: str = ""

    def get_rate(self) -> str | None:
        # DRF takes "N/period" strings (None: no limit); its stubs type the rates as numbers.
        return api_settings.DEFAULT_THROTTLE_RATES[self.scope]  # type: ignore[return-value]

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AuthTokenThrottle(AddressRateThrottle):
    scope = "auth"


class LoginThrottle(AddressRateThrottle):
    scope = "login"


def throttle_posts(throttle_class: type[AddressRateThrottle]) -> Callable:
    """Apply a DRF throttle to a plain Django view's POSTs (the web log-in form)."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method == "POST":
                throttle = throttle_class()
                # A plain Django view: the throttle reads only the request's address.
                if not throttle.allow_request(request, None):  # type: ignore[arg-type]
                    seconds = math.ceil(throttle.wait() or 1)
                    response = HttpResponse(
                        f"Too many log-in attempts from this address; "
                        f"try again in {seconds} seconds.\n",
                        status=429,
                        content_type="text/plain; charset=utf-8",
                    )
                    response["Retry-After"] = str(seconds)
                    return response
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def reset_throttles(*idents: str) -> None:
    """Forget the counts for these client addresses (tests; an operator unlocking an office)."""
    from django.core.cache import cache

    keys = [
        AddressRateThrottle.cache_format % {"scope": scope, "ident": ident}
        for scope in api_settings.DEFAULT_THROTTLE_RATES
        for ident in idents
    ]
    cache.delete_many(keys)

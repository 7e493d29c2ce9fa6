"""Cached serialised case summaries for the API's case list and case detail.

Serialising a case (its images, each image's prediction or segmentation, explanations,
lungs) and encoding it as JSON is most of what a case request costs. A summary is kept
in the cache as its JSON bytes, under a key made of the case's id, its ``updated_at``
(which moves with every change of anything the summary shows: ``apps.cases.freshness``)
and the origin the URLs in it were built for. A change makes a new key, so a stale
summary is never served and nothing has to be deleted: old keys expire
(``SUMMARY_SECONDS``). Every process reads the same ``updated_at`` from the database, so
this holds with a per-process cache too. A page of the list is the cached bytes joined
into the paginator's envelope: nothing is serialised or encoded again.

A page of cases costs a fixed number of queries: the count, the page's rows (id and
``updated_at``), one ``get_many`` from the cache, and for the cases not there, their rows
and one prefetching query per relation for all of them together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from django.core.cache import cache
from django.http import HttpResponse
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from apps.cases.access import own_cases
from apps.cases.models import Case

SUMMARY_SECONDS = 3600
PREFIX = "api-case-json:v1"


def origin_digest(request: Request) -> str:
    """The scheme and host the summary's URLs are built for, digested."""
    return hashlib.sha256(request.build_absolute_uri("/").encode()).hexdigest()[:16]


def summary_key(case: Case, origin: str) -> str:
    return f"{PREFIX}:{case.pk}:{case.updated_at.isoformat()}:{origin}"


def render(data: Any) -> bytes:
    """JSON exactly as the API's renderer writes it (compact, UTF-8)."""
    return JSONRenderer().render(data)


def case_summaries(cases: Sequence[Case], request: Request) -> list[bytes]:
    """The API representation (``CaseSerializer``, as JSON) of each of the requester's
    ``cases`` (rows with at least ``pk`` and ``updated_at``), from the cache where it has
    them. A case deleted meanwhile is left out."""
    from apps.cases.api.serializers import CaseSerializer

    origin = origin_digest(request)
    keys = {case.pk: summary_key(case, origin) for case in cases}
    found: dict[str, bytes] = cache.get_many(list(keys.values())) if keys else {}
    missing = [pk for pk, key in keys.items() if key not in found]
    if missing:
        fresh = {}
        for case in own_cases(request.user).filter(pk__in=missing):
            # Keyed by the updated_at read with the page: the rows read now are at least
            # as new (a change in between gets a newer key, and a later request computes
            # that one).
            fresh[keys[case.pk]] = render(CaseSerializer(case, context={"request": request}).data)
        cache.set_many(fresh, SUMMARY_SECONDS)
        found.update(fresh)
    return [found[keys[case.pk]] for case in cases if keys[case.pk] in found]


def json_response(body: bytes) -> HttpResponse:
    return HttpResponse(body, content_type="application/json")


def page_body(envelope: dict[str, Any], summaries: list[bytes]) -> bytes:
    """The paginator's envelope (count, next, previous) with ``summaries`` as its
    ``results``, which the envelope has last."""
    empty = render({**envelope, "results": []})
    if not empty.endswith(b"[]}"):
        raise ValueError("the page envelope does not end with its results")
    return empty[:-3] + b"[" + b",".join(summaries) + b"]}"

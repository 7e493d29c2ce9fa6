"""One timestamp that says when anything shown about a case last changed: ``Case.updated_at``.

A case's page and its API representation show its images and, for each, the prediction
or CT segmentation, the explanations, the readers' verdicts and the adjudication. Every
save or delete of one of those rows also moves its case's ``updated_at``, in the same
transaction, with one ``UPDATE``. So ``updated_at`` is the version of everything shown
about the case, in the database, where every web process and worker sees the same value
(a per-process cache could not be told about a change a worker made).

The read path keys on it: the cached API summaries (``apps.cases.api.summaries``) and the
conditional GETs (ETag / Last-Modified -> 304) of the API case endpoints and of the live
refreshes of the case pages (:func:`case_etag`).

Writes that bypass ``save()`` (``QuerySet.update``) would not move it; none is made on
these models (``tests/cases/test_freshness.py`` checks the ones that are).
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.db.models.signals import post_delete, post_save
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils import timezone
from django.utils.cache import get_conditional_response

from apps.cases.models import Adjudication, Case, CaseImage, ExpertLabel, Prediction, Segmentation


def touch_case(case_id: int | None) -> None:
    """Mark the case as changed now (deleted cases too: their rows may still be purged)."""
    if case_id is not None:
        Case._base_manager.filter(pk=case_id).update(updated_at=timezone.now())


def touch_case_of_image(image_id: int | None) -> None:
    """Mark the case of an image as changed now (one UPDATE with a subquery)."""
    if image_id is not None:
        image_cases = CaseImage.all_objects.filter(pk=image_id).values("case_id")
        Case._base_manager.filter(pk__in=image_cases).update(updated_at=timezone.now())


def _image_changed(sender: Any, instance: CaseImage, **_kwargs: Any) -> None:
    touch_case(instance.case_id)


def _image_row_changed(sender: Any, instance: Any, **_kwargs: Any) -> None:
    touch_case_of_image(instance.image_id)


def connect() -> None:
    """Connect the receivers (``CasesConfig.ready``)."""
    from apps.explain.models import Explanation

    for signal in (post_save, post_delete):
        signal.connect(_image_changed, sender=CaseImage, dispatch_uid=f"freshness.image.{signal}")
        for model in (Prediction, Segmentation, ExpertLabel, Adjudication, Explanation):
            signal.connect(
                _image_row_changed,
                sender=model,
                dispatch_uid=f"freshness.{model._meta.label_lower}.{signal}",
            )


def case_etag(case: Case, *parts: object) -> str:
    """A strong ETag for a representation of ``case`` that depends only on the case's
    rows and ``parts`` (who asks, which host)."""
    text = "|".join([str(case.pk), case.updated_at.isoformat(), *map(str, parts)])
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:24] + '"'


# -- live refreshes of the case pages (static/js/live.js) ----------------------------
# The live script fetches its page again every 2 s while something on it is pending and
# sends the ETag of its last copy. Only the live parts of the page (data-live elements)
# are read from the answer, and those depend only on the cases' rows, so an ETag of the
# cases' versions decides: unchanged, the answer is a 304 with nothing rendered. A
# normal page load is never answered 304 (the page has more than its live parts).

LIVE_HEADER = "X-Live-Refresh"


def is_live_refresh(request: HttpRequest) -> bool:
    return bool(request.headers.get(LIVE_HEADER))


def live_etag(request: HttpRequest, *parts: object) -> str:
    """The ETag of a page's live parts: the user, the page and what the parts depend on."""
    text = "|".join([str(request.user.pk), request.path, *map(str, parts)])
    return '"live-' + hashlib.sha256(text.encode()).hexdigest()[:24] + '"'


def live_not_modified(request: HttpRequest, etag: str) -> HttpResponseBase | None:
    """304 for a live refresh whose copy is current, else None (render the page)."""
    if not is_live_refresh(request):
        return None
    return get_conditional_response(request, etag=etag)


def mark_live(request: HttpRequest, response: HttpResponseBase, etag: str) -> HttpResponseBase:
    """Give a live refresh's answer its ETag (the live script sends it back next time)."""
    if is_live_refresh(request):
        response["ETag"] = etag
    return response

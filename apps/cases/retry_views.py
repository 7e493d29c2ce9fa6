"""Retry from the case page: a failed classification (X-ray) or segmentation (CT slice)
is queued again by its owner.

The web twins of ``POST /api/v1/images/{id}/prediction/retry/`` and
``.../segmentation/retry/``: the same services (``apps.cases.services.retry_prediction``,
``retry_segmentation``), so the same rules and the same audit events
(``prediction.retry``, ``segmentation.retry``). A failed explanation's retry is
``explain:retry``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from apps.accounts.roles import CLINICIAN, role_required
from apps.cases import services
from apps.cases.models import CaseImage


@require_POST
@role_required(CLINICIAN)
def prediction_retry(request: HttpRequest, pk: int) -> HttpResponse:
    return _retry(
        request,
        pk,
        latest=lambda image: image.latest_prediction,
        retry=lambda job, actor: services.retry_prediction(prediction=job, actor=actor),
        what="classification",
    )


@require_POST
@role_required(CLINICIAN)
def segmentation_retry(request: HttpRequest, pk: int) -> HttpResponse:
    return _retry(
        request,
        pk,
        latest=lambda image: image.latest_segmentation,
        retry=lambda job, actor: services.retry_segmentation(segmentation=job, actor=actor),
        what="segmentation",
    )


def _retry(
    request: HttpRequest,
    pk: int,
    *,
    latest: Callable[[CaseImage], Any],
    retry: Callable[[Any, Any], Any],
    what: str,
) -> HttpResponse:
    # Another clinician's image is a 404, as on the case page.
    image = get_object_or_404(CaseImage, pk=pk, case__owner=request.user)
    job = latest(image)  # the one the page shows
    if job is None:
        messages.error(request, f"This image has no {what} to retry.")
        return redirect("cases:detail", pk=image.case_id)
    try:
        retry(job, request.user)
    except services.RetryRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request, f"{what.capitalize()} queued again; the result appears when ready."
        )
    return redirect("cases:detail", pk=image.case_id)

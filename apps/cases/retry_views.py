"""Retry from the case page: a failed classification is queued again by its owner.

The web twin of ``POST /api/v1/images/{id}/prediction/retry/``: the same service
(``apps.cases.services.retry_prediction``), so the same rules and the same audit
event (``prediction.retry``). A failed explanation's retry is ``explain:retry``.
"""

from __future__ import annotations

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
    # Another clinician's image is a 404, as on the case page.
    image = get_object_or_404(CaseImage, pk=pk, case__owner=request.user)
    prediction = image.latest_prediction  # the one the page shows
    if prediction is None:
        messages.error(request, "This image has no classification to retry.")
        return redirect("cases:detail", pk=image.case_id)
    try:
        services.retry_prediction(prediction=prediction, actor=request.user)
    except services.RetryRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Classification queued again; the result appears when ready.")
    return redirect("cases:detail", pk=image.case_id)

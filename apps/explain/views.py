"""Explanation views: ask for a method, fetch the stored files (owner only)."""

from __future__ import annotations

from django.contrib import messages
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.roles import ANNOTATOR, CLINICIAN, role_required
from apps.cases.models import CaseImage
from apps.explain import services
from apps.explain.models import Explanation


@require_POST
@role_required(CLINICIAN)
def request_method(request: HttpRequest, image_pk: int) -> HttpResponse:
    image = get_object_or_404(CaseImage, pk=image_pk, case__owner=request.user)
    try:
        services.request_explanation(
            image=image, method=request.POST.get("method", ""), requested_by=request.user
        )
    except services.ExplanationUnavailable as exc:
        messages.error(request, str(exc))
    return redirect("cases:detail", pk=image.case_id)


def _serve(request: HttpRequest, pk: int, field: str, content_type: str) -> FileResponse:
    from apps.cases.access import visible_images

    explanation = get_object_or_404(
        Explanation,
        pk=pk,
        image__in=visible_images(request.user),
        status=Explanation.Status.DONE,
    )
    try:
        handle = getattr(explanation, field).open("rb")
    except (FileNotFoundError, ValueError):
        raise Http404("The file is missing from storage.") from None
    response = FileResponse(handle, content_type=content_type)
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@role_required(CLINICIAN, ANNOTATOR)
def overlay(request: HttpRequest, pk: int) -> FileResponse:
    return _serve(request, pk, "overlay", "image/png")


@require_GET
@role_required(CLINICIAN, ANNOTATOR)
def heatmap(request: HttpRequest, pk: int) -> FileResponse:
    """The raw float32 map as a NumPy .npy file (for research tools)."""
    response = _serve(request, pk, "heatmap", "application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="explanation-{pk}.npy"'
    return response

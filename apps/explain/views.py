"""Explanation views: ask for a method, fetch the stored files (owner only)."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.audit import record_download
from apps.accounts.roles import ANNOTATOR, CLINICIAN, role_required
from apps.cases.models import CaseImage
from apps.explain import services
from apps.explain.models import Explanation
from cxrplatform.protected import protected_file_response


@require_POST
@role_required(CLINICIAN)
def request_method(request: HttpRequest, image_pk: int) -> HttpResponse:
    """Queue a method for an image; the viewer's script asks for JSON, a plain form gets a page."""
    image = get_object_or_404(CaseImage, pk=image_pk, case__owner=request.user)
    wants_json = "application/json" in request.headers.get("Accept", "")
    try:
        explanation = services.request_explanation(
            image=image, method=request.POST.get("method", ""), requested_by=request.user
        )
    except services.ExplanationUnavailable as exc:
        if wants_json:
            return JsonResponse({"error": str(exc)}, status=400)
        messages.error(request, str(exc))
        return redirect("cases:detail", pk=image.case_id)
    if wants_json:
        done = explanation.status == Explanation.Status.DONE
        message = (
            f"{explanation.get_method_display()} is ready."
            if done
            else f"{explanation.get_method_display()} queued; it appears when ready."
        )
        return JsonResponse(
            {
                "id": explanation.pk,
                "method": explanation.method,
                "status": explanation.status,
                "message": message,
            },
            status=200 if done else 202,
        )
    return redirect("cases:detail", pk=image.case_id)


def _visible_explanation(request: HttpRequest, pk: int) -> Explanation:
    from apps.cases.access import visible_images

    return get_object_or_404(
        Explanation,
        pk=pk,
        image__in=visible_images(request.user),
        status=Explanation.Status.DONE,
    )


def _serve(
    request: HttpRequest, pk: int, field: str, content_type: str, download_name: str | None = None
) -> HttpResponseBase:
    explanation = _visible_explanation(request, pk)
    response = protected_file_response(getattr(explanation, field), content_type, download_name)
    record_download(request, kind=field, target=explanation)
    return response


@require_GET
@role_required(CLINICIAN, ANNOTATOR)
def overlay(request: HttpRequest, pk: int) -> HttpResponseBase:
    return _serve(request, pk, "overlay", "image/png")


@require_GET
@role_required(CLINICIAN, ANNOTATOR)
def layer(request: HttpRequest, pk: int) -> HttpResponse:
    """The coloured heatmap alone (PNG), laid over the image at the viewer's chosen opacity."""
    import numpy as np

    from ml.serving.colours import heatmap_png

    explanation = _visible_explanation(request, pk)
    try:
        with explanation.heatmap.open("rb") as handle:
            png = heatmap_png(np.load(handle, allow_pickle=False))
    except (FileNotFoundError, ValueError) as exc:
        raise Http404(f"The stored heatmap cannot be read: {exc}") from None
    record_download(request, kind="heatmap_layer", target=explanation)
    return HttpResponse(
        png, content_type="image/png", headers={"Cache-Control": "private, no-store"}
    )


@require_GET
@role_required(CLINICIAN, ANNOTATOR)
def heatmap(request: HttpRequest, pk: int) -> HttpResponseBase:
    """The raw float32 map as a NumPy .npy file (for research tools)."""
    return _serve(request, pk, "heatmap", "application/octet-stream", f"explanation-{pk}.npy")


def overlay_name(explanation: Explanation) -> str:
    """A file name that says what the picture is: case, image, method and class."""
    from django.utils.text import slugify

    image = explanation.image
    number = list(image.case.images.values_list("pk", flat=True)).index(image.pk) + 1
    label = slugify(explanation.target_label or "map") or "map"
    return f"case-{image.case_id}-image-{number}-{explanation.method}-{label}.png"


@require_GET
@role_required(CLINICIAN, ANNOTATOR)
def overlay_download(request: HttpRequest, pk: int) -> HttpResponse:
    """The picture the viewer shows, as a file: the whole uploaded image at its own size
    with the heatmap stretched over it as the page lays it, and a colour bar."""
    import numpy as np

    from ml.data.preprocess import open_image
    from ml.explain.render import render_overlay

    explanation = _visible_explanation(request, pk)
    try:
        with explanation.heatmap.open("rb") as handle:
            values = np.load(handle, allow_pickle=False)
        with explanation.image.file.open("rb") as handle:
            picture = open_image(handle).convert("L")
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise Http404(f"The stored explanation cannot be read: {exc}") from None
    gray = np.asarray(picture, dtype=np.float32) / 255.0
    png = render_overlay(
        gray,
        values,
        title=f"{explanation.get_method_display()}: {explanation.target_label or 'map'}",
    )
    record_download(request, kind="overlay", target=explanation)
    return HttpResponse(
        png,
        content_type="image/png",
        headers={
            "Cache-Control": "private, no-store",
            "Content-Disposition": f'attachment; filename="{overlay_name(explanation)}"',
        },
    )

"""Explanation views: ask for a method, fetch the stored files (the owner by id; a
reader, once shown the model's answer, by the image's reference and the method)."""

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


def _own_explanation(request: HttpRequest, pk: int) -> Explanation:
    """A finished explanation by id: the case's owner only (readers name the image by
    its reference: ``_reader_explanation``)."""
    return get_object_or_404(
        Explanation.objects.select_related("image"),
        pk=pk,
        image__case__owner_id=request.user.pk,
        status=Explanation.Status.DONE,
    )


def _reader_explanation(request: HttpRequest, ref: str, method: str) -> Explanation:
    """The finished map of ``method`` on the image a labelling page names by reference
    (``apps.cases.access.reader_image``), only where the page shows the model's answer:
    with ``CXR_LABEL_SHOW_MODEL`` and once the reader gave a verdict (as the readers'
    API); a 404 otherwise."""
    from apps.cases.access import reader_image, reader_page_images
    from apps.cases.api.serializers import shows_model
    from apps.cases.models import ExpertLabel

    images = reader_page_images(request.user).prefetch_related("explanations")
    image = reader_image(request.user, ref, images)
    mine = ExpertLabel.objects.filter(image=image, annotator_id=request.user.pk).first()
    if not shows_model(mine):
        raise Http404("The model's answer is not shown to you for this image.")
    explanation = next(
        (
            e
            for e in image.current_explanations
            if e.method == method and e.status == Explanation.Status.DONE
        ),
        None,
    )
    if explanation is None:
        raise Http404(f"This image has no finished {method!r} map.")
    return explanation


def _serve(
    request: HttpRequest,
    explanation: Explanation,
    field: str,
    content_type: str,
    download_name: str | None = None,
) -> HttpResponseBase:
    response = protected_file_response(getattr(explanation, field), content_type, download_name)
    record_download(request, kind=field, target=explanation)
    return response


@require_GET
@role_required(CLINICIAN)
def overlay(request: HttpRequest, pk: int) -> HttpResponseBase:
    return _serve(request, _own_explanation(request, pk), "overlay", "image/png")


@require_GET
@role_required(ANNOTATOR)
def reader_overlay(request: HttpRequest, ref: str, method: str) -> HttpResponseBase:
    return _serve(request, _reader_explanation(request, ref, method), "overlay", "image/png")


@require_GET
@role_required(CLINICIAN)
def layer(request: HttpRequest, pk: int) -> HttpResponse:
    """The coloured heatmap alone (PNG), laid over the image at the viewer's chosen opacity."""
    return _layer(request, _own_explanation(request, pk))


@require_GET
@role_required(ANNOTATOR)
def reader_layer(request: HttpRequest, ref: str, method: str) -> HttpResponse:
    return _layer(request, _reader_explanation(request, ref, method))


def _layer(request: HttpRequest, explanation: Explanation) -> HttpResponse:
    import numpy as np

    from ml.serving.colours import heatmap_png

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
@role_required(CLINICIAN)
def heatmap(request: HttpRequest, pk: int) -> HttpResponseBase:
    """The raw float32 map as a NumPy .npy file (for research tools)."""
    explanation = _own_explanation(request, pk)
    return _serve(
        request, explanation, "heatmap", "application/octet-stream", f"explanation-{pk}.npy"
    )


@require_GET
@role_required(ANNOTATOR)
def reader_heatmap(request: HttpRequest, ref: str, method: str) -> HttpResponseBase:
    """The raw map, named after the image's short reference (no ids)."""
    explanation = _reader_explanation(request, ref, method)
    name = f"image-{ref[:6]}-{explanation.method}.npy"
    return _serve(request, explanation, "heatmap", "application/octet-stream", name)


def overlay_name(explanation: Explanation) -> str:
    """A file name that says what the picture is: case, image, method and class."""
    from django.utils.text import slugify

    image = explanation.image
    number = list(image.case.images.values_list("pk", flat=True)).index(image.pk) + 1
    label = slugify(explanation.target_label or "map") or "map"
    return f"case-{image.case_id}-image-{number}-{explanation.method}-{label}.png"


def reader_overlay_name(explanation: Explanation, ref: str) -> str:
    """The picture's file name for a reader: the image's short reference, no case."""
    from django.utils.text import slugify

    label = slugify(explanation.target_label or "map") or "map"
    return f"image-{ref[:6]}-{explanation.method}-{label}.png"


@require_GET
@role_required(CLINICIAN)
def overlay_download(request: HttpRequest, pk: int) -> HttpResponse:
    """The picture the viewer shows, as a file: the whole uploaded image at its own size
    with the heatmap stretched over it as the page lays it, and a colour bar."""
    explanation = _own_explanation(request, pk)
    return _overlay_download(request, explanation, overlay_name(explanation))


@require_GET
@role_required(ANNOTATOR)
def reader_overlay_download(request: HttpRequest, ref: str, method: str) -> HttpResponse:
    explanation = _reader_explanation(request, ref, method)
    return _overlay_download(request, explanation, reader_overlay_name(explanation, ref))


def _overlay_download(request: HttpRequest, explanation: Explanation, name: str) -> HttpResponse:
    import numpy as np

    from ml.data.preprocess import open_image
    from ml.explain.render import render_overlay

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
            "Content-Disposition": f'attachment; filename="{name}"',
        },
    )

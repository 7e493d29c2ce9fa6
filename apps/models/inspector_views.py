"""Model-inspector pages (model admins): pick a version, an image and a layer; see the
filters, activation maps and explanation methods side by side. Thin: the work is in
``apps.explain.inspector`` and runs on the ``explain`` queue."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from apps.accounts.roles import MODEL_ADMIN, role_required
from apps.explain import inspector
from apps.explain.models import InspectionPicture
from cxrplatform.protected import protected_file_response


def _form_context(request: HttpRequest, errors: list[str] | None = None) -> dict:
    versions = list(inspector.inspectable_versions())
    chosen = request.POST.get("version") or request.GET.get("version")
    version = next((v for v in versions if str(v.pk) == chosen), None)
    if version is None:
        version = next((v for v in versions if v.status == "production"), None) or (
            versions[0] if versions else None
        )
    return {
        "versions": versions,
        "version": version,
        "layers": (version.card or {}).get("inspector_layers", []) if version else [],
        "reference_images": inspector.reference_images()[:500],
        "case_images": inspector.training_case_images()[:200],
        "chosen_image": request.POST.get("image") or request.GET.get("image", ""),
        "chosen_layer": request.POST.get("layer", ""),
        "recent": inspector.visible_inspections().select_related("model_version")[:10],
        "errors": errors or [],
    }


@role_required(MODEL_ADMIN)
@require_http_methods(["GET", "POST"])
def inspector_form(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        context = _form_context(request)
        version, image = context["version"], inspector.image_choice(request.POST.get("image", ""))
        layer = request.POST.get("layer", "")
        errors = []
        if version is None or str(version.pk) != request.POST.get("version"):
            errors.append("Choose a model version.")
        if image is None:
            errors.append("Choose an image.")
        if layer and context["layers"] and layer not in context["layers"]:
            errors.append("Choose a layer of this model version.")
        if not errors and version is not None and image is not None:
            inspection = inspector.request_inspection(
                user=request.user, version=version, image=image, layer=layer
            )
            return redirect("registry:inspection", pk=inspection.pk)
        context["errors"] = errors
        return render(request, "registry/inspector.html", context, status=400)
    return render(request, "registry/inspector.html", _form_context(request))


@role_required(MODEL_ADMIN)
@require_GET
def inspection_detail(request: HttpRequest, pk: int) -> HttpResponse:
    inspection = get_object_or_404(
        inspector.visible_inspections().select_related(
            "model_version", "reference_image", "case_image"
        ),
        pk=pk,
    )
    pictures = list(inspection.pictures.all())
    return render(
        request,
        "registry/inspection.html",
        {
            "inspection": inspection,
            "overview": [p for p in pictures if p.kind in {"input", "filters", "activations"}],
            "methods": [p for p in pictures if p.kind not in {"input", "filters", "activations"}],
        },
    )


@role_required(MODEL_ADMIN)
@require_GET
def inspection_picture(request: HttpRequest, pk: int) -> HttpResponseBase:
    picture = get_object_or_404(
        InspectionPicture.objects.select_related("inspection__case_image"),
        pk=pk,
        inspection__in=inspector.visible_inspections(),
    )
    inspector.picture_viewed(user=request.user, picture=picture)
    return protected_file_response(picture.file, "image/png")

"""The generator page (model admins): pick a version and a class, a job draws a grid."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from apps.accounts.models import record
from apps.accounts.roles import MODEL_ADMIN, role_required
from apps.generator import services
from apps.generator.forms import GridForm
from apps.generator.models import GeneratorVersion, SampleGrid
from cxrplatform.protected import protected_file_response


@require_http_methods(["GET", "POST"])
@role_required(MODEL_ADMIN)
def index(request: HttpRequest) -> HttpResponse:
    versions = GeneratorVersion.objects.all()
    form = GridForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            grid = services.request_grid(
                version=form.cleaned_data["version"],
                label=form.cleaned_data["label"],
                n=form.cleaned_data["n"],
                seed=form.cleaned_data["seed"],
                requested_by=request.user,
            )
        except services.GeneratorUnavailable as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Sample grid queued; it appears here when ready.")
            return redirect("generator:grid", pk=grid.pk)
    grids = SampleGrid.objects.select_related("version", "requested_by")[:20]
    return render(
        request,
        "generator/index.html",
        {"form": form, "versions": versions, "grids": grids},
        status=400 if request.method == "POST" else 200,
    )


@require_GET
@role_required(MODEL_ADMIN)
def grid_detail(request: HttpRequest, pk: int) -> HttpResponse:
    grid = get_object_or_404(SampleGrid.objects.select_related("version", "requested_by"), pk=pk)
    return render(request, "generator/grid.html", {"grid": grid})


@require_GET
@role_required(MODEL_ADMIN)
def grid_image(request: HttpRequest, pk: int) -> HttpResponseBase:
    grid = get_object_or_404(SampleGrid, pk=pk, status=SampleGrid.Status.DONE)
    response = protected_file_response(
        grid.image,
        "image/png",
        download_name=f"SYNTHETIC-{grid.label}-grid{grid.pk}.png"
        if request.GET.get("download")
        else None,
    )
    response["X-Synthetic-Image"] = "true"
    record(actor=request.user, action="generator.download", target=grid)
    return response

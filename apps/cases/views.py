"""Web views for clinicians' cases: thin, they parse input and call services."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.roles import ANNOTATOR, CLINICIAN, role_required
from apps.cases import labelling, services
from apps.cases.access import own_cases, visible_images
from apps.cases.filters import filter_cases
from apps.cases.forms import CaseUploadForm
from apps.cases.models import VERDICT_CHOICES
from apps.cases.validation import UploadRejected
from apps.explain.models import Explanation
from cxrplatform.protected import protected_file_response


@require_GET
@role_required(CLINICIAN)
def case_list(request: HttpRequest) -> HttpResponse:
    """The clinician's cases, filtered by status, label and date; statuses update live."""
    filtered = filter_cases(own_cases(request.user), request.GET)
    cases = filtered.qs if filtered.is_valid() else own_cases(request.user).none()
    page = Paginator(cases, 25).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "cases/case_list.html",
        {
            "filter": filtered,
            "page": page,
            "query": query.urlencode(),
            "filtering": any(v for k, v in request.GET.items() if k != "page"),
            "has_cases": own_cases(request.user).exists(),
        },
    )


@require_http_methods(["GET", "POST"])
@role_required(CLINICIAN)
def case_create(request: HttpRequest) -> HttpResponse:
    """The upload page; its script posts the same form and asks for JSON to show progress."""
    form = CaseUploadForm(request.POST or None, request.FILES or None)
    wants_json = "application/json" in request.headers.get("Accept", "")
    status, rejected = 200, []
    if request.method == "POST":
        if form.is_valid():
            try:
                case = services.create_case(
                    owner=request.user,
                    files=form.cleaned_data["images"],
                    patient_ref=form.cleaned_data["patient_ref"],
                    notes=form.cleaned_data["notes"],
                )
            except UploadRejected as exc:
                rejected = [{"name": r.filename, "problem": r.problem} for r in exc.rejections]
                form.add_error("images", str(exc))
                status = exc.status
            else:
                url = reverse("cases:detail", args=[case.pk])
                if wants_json:
                    return JsonResponse({"id": case.pk, "url": url}, status=201)
                return redirect(url)
        else:
            status = 400
        if wants_json:
            return JsonResponse(
                {
                    "error": "The upload was refused; nothing was stored.",
                    "files": rejected,
                    "fields": {name: list(errors) for name, errors in form.errors.items()},
                },
                status=status,
            )
    return render(
        request,
        "cases/case_create.html",
        {
            "form": form,
            "max_bytes": settings.CXR_MAX_UPLOAD_BYTES,
            "max_files": settings.CXR_MAX_IMAGES_PER_CASE,
            "rejected": rejected,
        },
        status=status,
    )


@require_GET
@role_required(CLINICIAN)
def case_detail(request: HttpRequest, pk: int) -> HttpResponse:
    # Another clinician's case is a 404, not a 403: its existence is not theirs to know.
    case = get_object_or_404(own_cases(request.user), pk=pk)
    return render(
        request,
        "cases/case_detail.html",
        {"case": case, "methods": Explanation.Method.choices},
    )


@require_GET
@role_required(CLINICIAN, ANNOTATOR)
def image_file(request: HttpRequest, pk: int) -> HttpResponseBase:
    """Uploaded images are never public: only the case's owner and annotators see them."""
    image = get_object_or_404(visible_images(request.user), pk=pk)
    content_type = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "image/png"}[
        image.source_format
    ]
    return protected_file_response(image.file, content_type)


LUNG_FILES = {"mask": "lung_mask", "outline": "lung_outline"}


@require_GET
@role_required(CLINICIAN, ANNOTATOR)
def lung_file(request: HttpRequest, pk: int, kind: str) -> HttpResponseBase:
    """The image's lung mask or outline PNG: the same people as the image itself."""
    from apps.cases.lungs import lung_prediction

    image = get_object_or_404(visible_images(request.user), pk=pk)
    prediction = lung_prediction(image)
    if prediction is None or kind not in LUNG_FILES:
        raise Http404("This image has no lung mask.")
    return protected_file_response(getattr(prediction, LUNG_FILES[kind]), "image/png")


@require_GET
@role_required(ANNOTATOR)
def label_queue(request: HttpRequest) -> HttpResponse:
    """One image at a time, most in need first; no patient identifiers on this page."""
    queue = labelling.labelling_queue(annotator=request.user)
    skipped = request.GET.get("after", "")
    if skipped.isdigit():
        # "Skip": show the image after the skipped one, wrapping around.
        position = next((i for i, image in enumerate(queue) if image.pk == int(skipped)), -1)
        queue = queue[position + 1 :] + queue[: position + 1]
    return render(
        request,
        "cases/label_queue.html",
        {
            "image": queue[0] if queue else None,
            "remaining": len(queue),
            "verdicts": VERDICT_CHOICES,
            "disputed": labelling.disagreements()[:20],
        },
    )


@require_POST
@role_required(ANNOTATOR)
def label_submit(request: HttpRequest, pk: int) -> HttpResponse:
    image = get_object_or_404(visible_images(request.user), pk=pk)
    try:
        labelling.submit_label(
            image=image,
            annotator=request.user,
            label=request.POST.get("label", ""),
            note=request.POST.get("note", ""),
        )
    except labelling.LabelRejected as exc:
        messages.error(request, str(exc))
    return redirect("cases:label-queue")

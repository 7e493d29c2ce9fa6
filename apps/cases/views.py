"""Web views for clinicians' cases: thin, they parse input and call services."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import RequestDataTooBig
from django.core.paginator import Paginator
from django.db.models import Count, Max
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from apps.accounts.audit import record_download, record_view
from apps.accounts.roles import ADJUDICATOR, ANNOTATOR, CLINICIAN, MODEL_ADMIN, role_required
from apps.cases import labelling, page_files, services
from apps.cases.access import (
    image_ref,
    own_cases,
    reader_image,
    reader_page_images,
    short_ref,
)
from apps.cases.filters import filter_cases
from apps.cases.forms import CaseUploadForm
from apps.cases.freshness import is_live_refresh, live_etag, live_not_modified, mark_live
from apps.cases.models import (
    VERDICT_CHOICES,
    Adjudication,
    Case,
    CaseImage,
    ExpertLabel,
    LabelPolicy,
    newest_result,
)
from apps.cases.uploads import FileTooLarge
from apps.cases.validation import UploadRejected
from cxrplatform.protected import protected_file_response


@require_GET
@role_required(CLINICIAN)
def case_list(request: HttpRequest) -> HttpResponseBase:
    """The clinician's cases, filtered by status, label and date; statuses update live."""
    filtered = filter_cases(own_cases(request.user), request.GET)
    cases = filtered.qs if filtered.is_valid() else own_cases(request.user).none()
    # A live refresh of an unchanged list is a 304: one aggregate query, nothing rendered.
    version = cases.aggregate(n=Count("pk"), last=Max("updated_at"))
    etag = live_etag(request, version["n"], version["last"], request.GET.urlencode())
    if (unchanged := live_not_modified(request, etag)) is not None:
        return unchanged
    paginator = Paginator(cases, 25)
    paginator.count = version["n"]  # counted above already (a cached property)
    page = paginator.get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    response = render(
        request,
        "cases/case_list.html",
        {
            "filter": filtered,
            "page": page,
            "query": query.urlencode(),
            "filtering": any(v for k, v in request.GET.items() if k != "page"),
            "has_cases": version["n"] > 0 or own_cases(request.user).exists(),
        },
    )
    return mark_live(request, response, etag)


@require_http_methods(["GET", "POST"])
@role_required(CLINICIAN)
def case_create(request: HttpRequest) -> HttpResponse:
    """The upload page; its script posts the same form and asks for JSON to show progress."""
    wants_json = "application/json" in request.headers.get("Accept", "")
    try:
        form = CaseUploadForm(request.POST or None, request.FILES or None)
    except RequestDataTooBig as exc:  # apps.cases.uploads stopped reading the body
        return _body_too_large(request, exc, wants_json)
    status, rejected = 200, []
    if request.method == "POST":
        if form.is_valid():
            try:
                case = services.create_case(
                    owner=request.user,
                    files=form.cleaned_data["images"],
                    patient_ref=form.cleaned_data["patient_ref"],
                    notes=form.cleaned_data["notes"],
                    modality=form.cleaned_data["modality"],
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


def _body_too_large(request: HttpRequest, exc: RequestDataTooBig, wants_json: bool) -> HttpResponse:
    problem = str(exc) or "The upload is too large."
    files = (
        [{"name": exc.filename, "problem": exc.problem}] if isinstance(exc, FileTooLarge) else []
    )
    if wants_json:
        return JsonResponse(
            {"error": "The upload was refused; nothing was stored.", "files": files, "fields": {}},
            status=413,
        )
    form = CaseUploadForm()
    form.add_error(None, problem)
    context = {
        "form": form,
        "max_bytes": settings.CXR_MAX_UPLOAD_BYTES,
        "max_files": settings.CXR_MAX_IMAGES_PER_CASE,
        "rejected": files,
    }
    return render(request, "cases/case_create.html", context, status=413)


@require_http_methods(["POST"])
@role_required(CLINICIAN)
def image_release(request: HttpRequest, pk: int) -> HttpResponse:
    """The owner releases an image held for text in its margins (services.release_held_image).
    Another clinician's image is a 404, as on the case page."""
    image = get_object_or_404(CaseImage, pk=pk, case__owner=request.user)
    try:
        services.release_held_image(image=image, actor=request.user)
    except UploadRejected as exc:
        messages.error(request, exc.problem[:1].upper() + exc.problem[1:])
    else:
        messages.success(request, "The image is released: annotators can now label it.")
    return redirect("cases:detail", pk=image.case_id)


@require_GET
@role_required(CLINICIAN)
def case_detail(request: HttpRequest, pk: int) -> HttpResponseBase:
    # Another clinician's case is a 404, not a 403: its existence is not theirs to know.
    stamp = get_object_or_404(
        Case.objects.filter(owner=request.user).only("pk", "updated_at"), pk=pk
    )
    # A live refresh of an unchanged case is a 304 (its updated_at moves with anything
    # the page shows: apps.cases.freshness): no prefetching, nothing rendered.
    etag = live_etag(request, stamp.pk, stamp.updated_at)
    if (unchanged := live_not_modified(request, etag)) is not None:
        return unchanged
    case = get_object_or_404(own_cases(request.user), pk=pk)
    kind = case.kind  # its page, and the explanation methods that page offers
    response = render(
        request, kind.template, {"case": case, "kind": kind, "methods": kind.method_choices}
    )
    # One event for the page and the files it loads (their fetches write none of their own).
    record_view(
        request,
        action="case.viewed",
        target=case,
        files=page_files.case_files(case),
        refresh=is_live_refresh(request),
        images=[image.pk for image in case.images.all()],
    )
    return mark_live(request, response, etag)


def _serve_image(request: HttpRequest, image: CaseImage) -> HttpResponseBase:
    response = protected_file_response(image.file, image.content_type)
    record_download(request, kind="image", target=image)
    return response


@require_GET
@role_required(CLINICIAN)
def image_file(request: HttpRequest, pk: int) -> HttpResponseBase:
    """Uploaded images are never public: by id, only the case's owner sees them (readers
    open them by reference: ``reader_image_file``). Audited as ``download.image`` unless
    a page view named it (``record_download``)."""
    return _serve_image(
        request, get_object_or_404(CaseImage, pk=pk, case__owner_id=request.user.pk)
    )


@require_GET
@role_required(ANNOTATOR, ADJUDICATOR)
def reader_image_file(request: HttpRequest, ref: str) -> HttpResponseBase:
    """The image of a labelling or adjudication page, by its reference."""
    return _serve_image(request, reader_image(request.user, ref))


LUNG_FILES = {"mask": "lung_mask", "outline": "lung_outline"}


@require_GET
@role_required(CLINICIAN)
def lung_file(request: HttpRequest, pk: int, kind: str) -> HttpResponseBase:
    """The image's lung mask or outline PNG, by id: the case's owner only."""
    image = get_object_or_404(CaseImage, pk=pk, case__owner_id=request.user.pk)
    return _serve_lungs(request, image, kind)


@require_GET
@role_required(ANNOTATOR, ADJUDICATOR)
def reader_lung_file(request: HttpRequest, ref: str, kind: str) -> HttpResponseBase:
    """The lung outline (or mask) of a labelling or adjudication page, by reference."""
    return _serve_lungs(request, reader_image(request.user, ref), kind)


def _serve_lungs(request: HttpRequest, image: CaseImage, kind: str) -> HttpResponseBase:
    from apps.cases.lungs import lung_prediction

    prediction = lung_prediction(image)
    if prediction is None or kind not in LUNG_FILES:
        raise Http404("This image has no lung mask.")
    response = protected_file_response(getattr(prediction, LUNG_FILES[kind]), "image/png")
    record_download(request, kind=LUNG_FILES[kind], target=prediction)
    return response


@require_GET
@role_required(CLINICIAN)
def ct_layer(request: HttpRequest, pk: int, kind: str) -> HttpResponse:
    """A CT slice's mask as the viewer's coloured layer (RGBA PNG, transparent outside
    the mask): the case's owner only. The API serves the plain 8-bit masks."""
    from apps.cases.models import CT_MASK_KINDS
    from apps.cases.segmentation import layer_png

    image = get_object_or_404(CaseImage.objects.filter(case__owner_id=request.user.pk), pk=pk)
    segmentation = newest_result(image.segmentations.all())
    if segmentation is None or kind not in CT_MASK_KINDS:
        raise Http404("This slice has no such mask.")
    field = segmentation.mask_field(kind)
    if not field:
        raise Http404("This slice has no such mask.")
    try:
        with field.open("rb") as handle:
            png = layer_png(handle.read(), kind)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise Http404(f"The stored mask cannot be read: {exc}") from None
    record_download(request, kind="ct_layer", target=segmentation, name=kind)
    return HttpResponse(
        png, content_type="image/png", headers={"Cache-Control": "private, no-store"}
    )


@require_GET
@role_required(ANNOTATOR)
def label_queue(request: HttpRequest) -> HttpResponse:
    """One image at a time, most in need first; no patient identifiers on this page,
    and not the model's answer (anchoring): see ``label_image``."""
    queue = labelling.labelling_queue(annotator=request.user)
    skipped = request.GET.get("after", "")
    if skipped:
        # "Skip": show the image after the skipped one (by reference), wrapping around.
        position = next((i for i, image in enumerate(queue) if image_ref(image) == skipped), -1)
        queue = queue[position + 1 :] + queue[: position + 1]
    if queue:
        files = page_files.image_files(queue[0], heatmaps=False)
        record_view(request, action="image.viewed", target=queue[0], files=files)
    return render(
        request,
        "cases/label_queue.html",
        {
            "image": queue[0] if queue else None,
            "skip_url": (
                f"{reverse('cases:label-queue')}?after={image_ref(queue[0])}" if queue else ""
            ),
            "remaining": len(queue),
            "verdicts": VERDICT_CHOICES,
            "disputed": labelling.disagreements()[:20],
            "policy": labelling.current_policy().name,
        },
    )


@require_http_methods(["GET", "POST"])
@role_required(ANNOTATOR)
def label_image(request: HttpRequest, ref: str) -> HttpResponse:
    """One image's verdict: give it, see it, revise it. The image is named by its
    reference, as in the readers' API: the page shows no image or case id.

    After a reader's first answer, and only with ``CXR_LABEL_SHOW_MODEL``, the
    reader comes here and sees the model's prediction (their answer is recorded
    first, so the statistics see the unanchored read); they may then revise.
    """
    images = reader_page_images(request.user).prefetch_related(
        "predictions__model_version", "explanations"
    )
    image = reader_image(request.user, ref, images)
    mine = ExpertLabel.objects.filter(image=image, annotator_id=request.user.pk).first()
    if request.method == "POST":
        try:
            labelling.submit_label(
                image=image,
                annotator=request.user,
                label=request.POST.get("label", ""),
                note=request.POST.get("note", ""),
            )
        except labelling.LabelRejected as exc:
            messages.error(request, str(exc))
            return redirect("cases:label", ref=ref)
        if request.POST.get("from") == "review":
            messages.success(request, "Your verdict is changed.")
            return redirect("cases:label", ref=ref)
        if mine is None and settings.CXR_LABEL_SHOW_MODEL:
            messages.success(
                request,
                "Your answer is recorded. The model's answer is shown below; you may change yours.",
            )
            return redirect("cases:label", ref=ref)
        return redirect("cases:label-queue")
    adjudication = Adjudication.objects.filter(image=image).first()
    show_model = settings.CXR_LABEL_SHOW_MODEL and mine is not None
    files = page_files.image_files(image, heatmaps=show_model)
    record_view(request, action="image.viewed", target=image, files=files)
    return render(
        request,
        "cases/label_image.html",
        {
            "image": image,
            "ref": ref,
            "short_ref": short_ref(image),
            "mine": mine,
            "adjudication": adjudication,
            "show_model": show_model,
            "prediction": image.latest_prediction if show_model else None,
            "verdicts": VERDICT_CHOICES,
            "disputed": labelling.disagreements().filter(pk=image.pk).exists(),
        },
    )


@require_GET
@role_required(ANNOTATOR)
def my_verdicts(request: HttpRequest) -> HttpResponse:
    """The reader's own verdicts, newest first, each with a link to revise it."""
    verdicts = ExpertLabel.objects.filter(annotator_id=request.user.pk).select_related(
        "image__adjudication"
    )
    page = Paginator(verdicts.order_by("-updated_at", "-pk"), 25).get_page(request.GET.get("page"))
    return render(request, "cases/my_verdicts.html", {"page": page})


@require_GET
@role_required(ADJUDICATOR)
def adjudication_list(request: HttpRequest) -> HttpResponse:
    """Disputed images waiting for a decision, and the latest decisions."""
    policy = labelling.current_policy().name
    return render(
        request,
        "cases/adjudication_list.html",
        {
            "policy": policy,
            "disputed": labelling.disagreements() if policy == labelling.ADJUDICATION else [],
            "decided": Adjudication.objects.select_related("image", "adjudicator")[:25],
        },
    )


@require_http_methods(["GET", "POST"])
@role_required(ADJUDICATOR)
def adjudicate(request: HttpRequest, ref: str) -> HttpResponse:
    """Every reader's verdict with its note, side by side with the image; the
    adjudicator decides (without the model's answer: it would anchor them too). The
    image is named by its reference, as on the readers' pages."""
    image = reader_image(
        request.user,
        ref,
        reader_page_images(request.user).filter(expert_labels__isnull=False),
    )
    if request.method == "POST":
        try:
            labelling.adjudicate(
                image=image,
                adjudicator=request.user,
                label=request.POST.get("label", ""),
                note=request.POST.get("note", ""),
            )
        except labelling.LabelRejected as exc:
            messages.error(request, str(exc))
            return redirect("cases:adjudicate", ref=ref)
        messages.success(request, f"Image {short_ref(image)}… decided.")
        return redirect("cases:adjudication")
    files = page_files.image_files(image, heatmaps=False)
    record_view(request, action="image.viewed", target=image, files=files)
    return render(
        request,
        "cases/adjudicate.html",
        {
            "image": image,
            "ref": ref,
            "short_ref": short_ref(image),
            "readings": image.expert_labels.select_related("annotator").order_by(
                "created_at", "pk"
            ),
            "adjudication": Adjudication.objects.filter(image=image)
            .select_related("adjudicator")
            .first(),
            "verdicts": VERDICT_CHOICES,
            "policy": labelling.current_policy().name,
        },
    )


@require_http_methods(["GET", "POST"])
@role_required(MODEL_ADMIN)
def label_policy(request: HttpRequest) -> HttpResponse:
    """The label agreement policy: model admins read and change it here (audited
    ``labels.policy``); a refused change writes nothing and says why (400)."""
    error = ""
    if request.method == "POST":
        try:
            policy = labelling.set_policy(
                actor=request.user,
                policy=request.POST.get("policy", ""),
                readers=request.POST.get("readers", ""),
            )
        except labelling.PolicyRejected as exc:
            error = str(exc)
        else:
            messages.success(
                request, f"The agreement policy is now {policy.name} (k = {policy.readers})."
            )
            return redirect("cases:label-policy")
    current = labelling.current_policy()
    return render(
        request,
        "cases/label_policy.html",
        {
            "current": current,
            "choices": LabelPolicy.Policy.choices,
            "chosen": request.POST.get("policy", current.name) if error else current.name,
            "readers": request.POST.get("readers", current.readers) if error else current.readers,
            "max_readers": LabelPolicy.MAX_READERS,
            "error": error,
        },
        status=400 if error else 200,
    )


@require_GET
@role_required(MODEL_ADMIN)
def agreement_page(request: HttpRequest) -> HttpResponse:
    """Reader agreement statistics (apps.cases.agreement) for model admins."""
    from apps.cases import agreement

    return render(request, "cases/agreement.html", {"stats": agreement.current()})


@require_GET
@role_required(MODEL_ADMIN)
def agreement_csv(request: HttpRequest) -> HttpResponse:
    from apps.cases import agreement

    response = HttpResponse(
        agreement.to_csv(agreement.current()), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = 'attachment; filename="reader-agreement.csv"'
    return response

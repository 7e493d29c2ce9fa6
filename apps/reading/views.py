"""The reading room's pages: the site worklist, a study with its viewer and report form,
the signed report (its clinician sees it too) and the files the viewer loads. Thin: they
call ``apps.reading.services``."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.audit import ServedFile, record_download, record_view
from apps.accounts.models import record
from apps.accounts.roles import CLINICIAN, RADIOLOGIST, role_required
from apps.reading import pixels, services
from apps.reading.forms import ReportForm, WorklistFilter
from apps.sites.services import site_of
from cxrplatform.protected import protected_file_response


@require_GET
@role_required(RADIOLOGIST)
def worklist(request: HttpRequest) -> HttpResponseBase:
    """The site's studies, by the model's priority or newest first, filtered; live."""
    form = WorklistFilter(request.GET or None)
    params = form.cleaned_data if form.is_bound and form.is_valid() else {}
    params = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in params.items()}
    rows = services.worklist(request.user, params)
    refresh = bool(request.headers.get("X-Live-Refresh"))
    if not refresh:
        services.record_worklist_viewed(actor=request.user, rows=rows, via="web")
    state = "|".join(f"{r.case.pk}:{r.status}:{r.priority.score}" for r in rows)
    return render(
        request,
        "reading/worklist.html",
        {"form": form, "rows": rows, "site": site_of(request.user), "state": state},
    )


def _heat_of(image):
    """The finished explanation the viewer lays over an image: Grad-CAM, else any."""
    done = [e for e in image.current_explanations if e.status == "done" and e.heatmap]
    return next((e for e in done if e.method == "gradcam"), done[0] if done else None)


def _viewer_files(case) -> list[ServedFile]:
    """What the viewer loads of a case: the images, lung outlines and heatmap layers (one
    view event names them; apps.accounts.audit)."""
    files = []
    for image in case.images.all():
        files.append(ServedFile("image", image, image.pk))
        prediction = image.latest_prediction
        if prediction is not None and prediction.lungs_found and prediction.lung_outline:
            files.append(ServedFile("lung_outline", prediction, image.pk))
        if (heat := _heat_of(image)) is not None:
            files.append(ServedFile("heatmap_layer", heat, image.pk))
    return files


@require_GET
@role_required(RADIOLOGIST)
def study(request: HttpRequest, pk: int) -> HttpResponseBase:
    """One study of the site: the viewer, the model's result, priors, the report form."""
    case = services.study_for(request.user, pk)
    services.start_reading(actor=request.user, case=case)
    priors = services.priors_of(case)
    files = _viewer_files(case)
    for prior in priors:
        files += _viewer_files(prior)
    record_view(request, action="case.viewed", target=case, files=files, via="reading")
    history = list(case.reports.order_by("-version"))
    current = history[0] if history else None
    initial = (
        {"impression": current.impression, "text": current.text, "urgency": current.urgency}
        if current
        else {}
    )
    images = []
    for image in case.images.all():
        prediction = image.latest_prediction
        spacing = pixels.pixel_spacing(image) if image.original else None
        segmentation = image.latest_segmentation
        ct_mm2 = None
        if spacing and segmentation is not None and segmentation.status == "done":
            mm2 = spacing[0] * spacing[1]
            ct_mm2 = {
                "lung": (segmentation.lung_area or 0) * mm2,
                "infection": (segmentation.infection_area or 0) * mm2,
                "ggo": (segmentation.ggo_area or 0) * mm2,
                "consolidation": (segmentation.consolidation_area or 0) * mm2,
            }
        images.append(
            {
                "image": image,
                "prediction": prediction,
                "segmentation": segmentation,
                "probabilities": services.at_site_point(prediction)
                if prediction is not None and prediction.status == "done"
                else {},
                "spacing": spacing,
                "ct_mm2": ct_mm2,
            }
        )
    sources = _sources(case, priors)
    own = [source for source in sources if source["case"] == case.pk]
    others = [source for source in sources if source not in own[:1]]
    return render(
        request,
        "reading/study.html",
        {
            "sources": sources,
            "choices": sources,
            "first_key": own[0]["key"] if own else "",
            "compare_choices": sources,
            "compare_key": (others[0] if others else own[0])["key"] if own else "",
            "series": case.kind.series,
            "case": case,
            "images": images,
            "priority": services.priority_of(case),
            "priors": priors,
            "history": history,
            "form": ReportForm(initial=initial),
            "amending": current is not None,
        },
    )


def _sources(case, priors) -> list[dict]:
    """What the two viewports can show: the study's images (a CT series in slice order),
    then each earlier study's; each with the URLs the viewer loads."""
    from django.urls import reverse

    sources = []
    for study_case in [case, *priors]:
        word = study_case.kind.item
        prefix = (
            ""
            if study_case.pk == case.pk
            else (f"Prior case {study_case.pk} ({study_case.created_at:%Y-%m-%d}), ")
        )
        for n, image in enumerate(study_case.images.all(), start=1):
            prediction = image.latest_prediction
            outline = (
                reverse("reading:lung-outline", args=[image.pk])
                if prediction is not None and prediction.lungs_found and prediction.lung_outline
                else ""
            )
            heat = _heat_of(image)
            sources.append(
                {
                    "heat": reverse("reading:heat-layer", args=[heat.pk]) if heat else "",
                    "heat_method": heat.get_method_display() if heat else "",
                    "key": f"i{image.pk}",
                    "label": f"{prefix}{word} {n}",
                    "case": study_case.pk,
                    "image": image.pk,
                    "width": image.width,
                    "height": image.height,
                    "file": reverse("reading:image-file", args=[image.pk]),
                    "values": reverse("reading:values", args=[image.pk]) if image.original else "",
                    "dicom": reverse("reading:dicom", args=[image.pk]) + "?for=viewer"
                    if image.original
                    else "",
                    "meta": reverse("reading:meta", args=[image.pk]) if image.original else "",
                    "outline": outline,
                }
            )
    return sources


@require_POST
@role_required(RADIOLOGIST)
def sign(request: HttpRequest, pk: int) -> HttpResponseBase:
    case = services.study_for(request.user, pk)
    form = ReportForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The report is incomplete: " + form.errors.as_text())
        return redirect("reading:study", pk=case.pk)
    try:
        report, verdicts = services.sign_report(actor=request.user, case=case, **form.cleaned_data)
    except services.ReportRefused as exc:
        messages.error(request, str(exc))
        return redirect("reading:study", pk=case.pk)
    note = f" It entered labelling on {verdicts.entered} image(s)." if verdicts.entered else ""
    messages.success(request, f"Report version {report.version} signed.{note}")
    return redirect("reading:report", pk=case.pk)


@require_GET
@role_required(CLINICIAN, RADIOLOGIST)
def report_page(request: HttpRequest, pk: int) -> HttpResponseBase:
    """The signed report and its history: the case's clinician and its site's radiologists."""
    case = get_object_or_404(services.report_cases(request.user), pk=pk)
    history = list(case.reports.order_by("-version"))
    record(actor=request.user, action="report.viewed", target=case, after={"via": "web"})
    return render(request, "reading/report.html", {"case": case, "history": history})


@require_GET
@role_required(CLINICIAN, RADIOLOGIST)
def report_pdf(request: HttpRequest, pk: int) -> HttpResponseBase:
    from apps.reading.pdf import report_pdf as render_pdf

    case = get_object_or_404(services.report_cases(request.user), pk=pk)
    history = list(case.reports.order_by("-version"))
    if not history:
        raise Http404("This case has no signed report.")
    record(actor=request.user, action="report.exported", target=history[0], after={})
    return HttpResponse(
        render_pdf(case, history[0], history),
        content_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="report-case-{case.pk}'
            f'-v{history[0].version}.pdf"',
            "Cache-Control": "private, no-store",
        },
    )


@require_GET
@role_required(RADIOLOGIST)
def image_file(request: HttpRequest, pk: int) -> HttpResponseBase:
    image = services.image_for(request.user, pk)
    response = protected_file_response(image.file, image.content_type)
    record_download(request, kind="image", target=image)
    return response


@require_GET
@role_required(RADIOLOGIST)
def lung_outline(request: HttpRequest, pk: int) -> HttpResponseBase:
    image = services.image_for(request.user, pk)
    prediction = image.latest_prediction
    if prediction is None or not prediction.lung_outline:
        raise Http404("This image has no lung outline.")
    response = protected_file_response(prediction.lung_outline, "image/png")
    record_download(request, kind="lung_outline", target=prediction)
    return response


@require_GET
@role_required(RADIOLOGIST)
def heat_layer(request: HttpRequest, pk: int) -> HttpResponseBase:
    """An explanation's coloured heatmap (the case page's layer) for the site's radiologists."""
    import numpy as np

    from apps.explain.models import Explanation
    from ml.serving.colours import heatmap_png

    explanation = get_object_or_404(
        Explanation.objects.filter(
            image__case__in=services.site_cases(request.user).values("pk"),
            status=Explanation.Status.DONE,
        ),
        pk=pk,
    )
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
@role_required(RADIOLOGIST)
def dicom_download(request: HttpRequest, pk: int) -> HttpResponseBase:
    """The stored, de-identified DICOM file (audited ``download.dicom``); ``?for=viewer``:
    the viewer's own fetch (parsed in the browser by dicom-parser), the image's pixels that
    the study page's view event already names."""
    image = services.image_for(request.user, pk)
    if not image.original:
        raise Http404("This image was not uploaded as DICOM.")
    if request.GET.get("for") == "viewer":
        response = protected_file_response(image.original, "application/dicom")
        record_download(request, kind="image", target=image)
        return response
    response = protected_file_response(
        image.original, "application/dicom", download_name=f"case-{image.case_id}-image-{pk}.dcm"
    )
    record(actor=request.user, action="download.dicom", target=image, after={"via": "web"})
    return response


@require_GET
@role_required(RADIOLOGIST)
def dicom_meta(request: HttpRequest, pk: int) -> HttpResponseBase:
    """What the viewer windows with, and the de-identified header for the side panel."""
    image = services.image_for(request.user, pk)
    try:
        _, meta = pixels.values(image)
        meta["header"] = pixels.header(image)
    except pixels.NoDicomError as exc:
        raise Http404(str(exc)) from None
    return JsonResponse(meta, headers={"Cache-Control": "private, no-store"})


@require_GET
@role_required(RADIOLOGIST)
def dicom_values(request: HttpRequest, pk: int) -> HttpResponseBase:
    """The DICOM's modality values, float32 little-endian, for window/level in the viewer."""
    image = services.image_for(request.user, pk)
    try:
        data, meta = pixels.values(image)
    except pixels.NoDicomError as exc:
        raise Http404(str(exc)) from None
    record_download(request, kind="image", target=image)
    return HttpResponse(
        data,
        content_type="application/octet-stream",
        headers={
            "Cache-Control": "private, no-store",
            "X-Pixel-Meta": json.dumps({"width": meta["width"], "height": meta["height"]}),
        },
    )

"""Retry from the case page: a failed job on one of the clinician's images (its
classification, a CT slice's segmentation, an explanation) is queued again.

One view for every kind (``cases:job-retry``, ``/cases/jobs/<label>/<pk>/retry/``), the
web twin of the API's retry routes: the same service (``cxrplatform.jobs.retry_job``),
so the same rules and the same audit event (``<kind>.retry``). The older URLs the case
page posts to are this view too: ``cases:prediction-retry`` and
``cases:segmentation-retry`` name the image (its job of the kind that the page shows,
``apps.cases.models.current_job``), ``explain:retry`` the explanation.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from apps.accounts.roles import CLINICIAN, role_required
from apps.cases.models import CaseImage, ImageJob, current_job
from cxrplatform.errors import Refused
from cxrplatform.jobs import registered_jobs, retry_job


@require_POST
@role_required(CLINICIAN)
def job_retry(request: HttpRequest, label: str, pk: int, of_image: bool = False) -> HttpResponse:
    """Queue the failed job ``label`` ``pk`` again (``of_image``: ``pk`` is the image's, and
    the job its current one of that kind, the one its page shows). Another clinician's job
    or image is a 404, as on the case page."""
    model = registered_jobs().get(label)
    if model is None or not issubclass(model, ImageJob):
        raise Http404("No job of that kind can be retried here.")
    jobs = model.retryable_by(request.user)
    if of_image:
        image = get_object_or_404(CaseImage, pk=pk, case__owner=request.user)
        job = current_job(jobs.filter(image=image))
        if job is None:
            messages.error(request, f"This image has no {model._meta.verbose_name} to retry.")
            return redirect("cases:detail", pk=image.case_id)
    else:
        job = get_object_or_404(jobs, pk=pk)
    try:
        retry_job(job, actor=request.user)
    except Refused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{job.title} queued again; it appears when ready.")
    return redirect(job.case_page())

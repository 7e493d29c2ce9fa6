from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from apps.accounts.roles import ADJUDICATOR, ANNOTATOR, CLINICIAN, MODEL_ADMIN, user_roles


@require_GET
@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Each role lands where its work is; users without a role see why they can do nothing."""
    roles = user_roles(request.user)
    if roles == {CLINICIAN}:
        return redirect("cases:list")
    context: dict = {"roles": sorted(roles)}
    if CLINICIAN in roles:
        from apps.cases.access import own_cases
        from apps.cases.filters import filter_cases

        counts = {}
        for status in ("processing", "done", "failed"):
            counts[status] = filter_cases(own_cases(request.user), {"status": status}).qs.count()
        context["case_counts"] = counts
    if ANNOTATOR in roles:
        from apps.cases import labelling

        context["to_label"] = len(labelling.labelling_queue(annotator=request.user))
        context["disputed"] = labelling.disagreements().count()
    if ADJUDICATOR in roles:
        from apps.cases import labelling

        context["policy"] = labelling.current_policy().name
        context["to_adjudicate"] = labelling.disagreements().count()
    if MODEL_ADMIN in roles:
        from apps.models.models import ModelVersion, TrainingRun

        context["production"] = ModelVersion.objects.production()
        context["ct_production"] = ModelVersion.objects.production(task="ct_segmentation")
        context["candidates"] = ModelVersion.objects.filter(
            status=ModelVersion.Status.CANDIDATE
        ).count()
        context["last_run"] = TrainingRun.objects.order_by("-created_at").first()
    return render(request, "home.html", context)

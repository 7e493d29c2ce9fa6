"""The sites pages: the site list (superusers create sites and move accounts), a site's
accounts with their lockout (site admins unlock), the local validation study and the
site operating point (model admins). Thin: the services are ``apps.sites.services``."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.roles import MODEL_ADMIN, SITE_ADMIN, has_role, role_required
from apps.accounts.users import roles_of
from apps.models.models import ModelVersion, Task
from apps.sites import services
from apps.sites.forms import MoveUserForm, SiteCreateForm, StudyChoiceForm, TargetForm
from apps.sites.models import Site


def _study_subjects(site_pk: int, model_pk: int) -> tuple[Site, ModelVersion]:
    site = get_object_or_404(Site, pk=site_pk)
    version = get_object_or_404(ModelVersion.objects.of_task(Task.CLASSIFICATION), pk=model_pk)
    return site, version


@require_http_methods(["GET", "POST"])
@role_required(SITE_ADMIN, MODEL_ADMIN)
def site_list(request: HttpRequest) -> HttpResponse:
    """The sites: a site admin's own (its accounts), every site for model admins (a study
    to open) and superusers (who create sites and move accounts between them)."""
    user = request.user
    status = 200
    create_form, move_form = SiteCreateForm(), MoveUserForm()
    if request.method == "POST":
        if not user.is_superuser:
            raise PermissionDenied("Only a superuser creates sites or moves accounts.")
        action = request.POST.get("action")
        try:
            if action == "create":
                create_form = SiteCreateForm(request.POST)
                if create_form.is_valid():
                    site = services.create_site(actor=user, **create_form.cleaned_data)
                    messages.success(request, f"The site {site.name} was created.")
                    return redirect("sites:index")
            elif action == "move":
                move_form = MoveUserForm(request.POST)
                if move_form.is_valid():
                    data = move_form.cleaned_data
                    moved = services.set_site(actor=user, user=data["user"], site=data["site"])
                    text = "moved to" if moved else "already belongs to"
                    messages.success(request, f"{data['user']} {text} {data['site']}.")
                    return redirect("sites:index")
            else:
                messages.error(request, "Unknown action.")
        except ValueError as exc:
            messages.error(request, str(exc))
        status = 400
    model_admin = has_role(user, MODEL_ADMIN)
    study = StudyChoiceForm(request.GET or None) if model_admin else None
    if study is not None and study.is_valid():
        return redirect(
            "sites:validation",
            pk=study.cleaned_data["site"].pk,
            model=study.cleaned_data["model"].pk,
        )
    managed = set(services.managed_sites(user).values_list("pk", flat=True))
    sites = Site.objects.all() if model_admin or user.is_superuser else Site.objects.none()
    sites = sites | services.managed_sites(user)
    rows = [
        {"site": site, "manages": site.pk in managed, "users": services.users_of(site).count()}
        for site in sites.distinct().order_by("name")
    ]
    context = {
        "rows": rows,
        "own": services.site_of(user),
        "study": study,
        "create_form": create_form if user.is_superuser else None,
        "move_form": move_form if user.is_superuser else None,
    }
    return render(request, "sites/site_list.html", context, status=status)


def _managed_site(request: HttpRequest, pk: int) -> Site:
    """The site, if the user manages its accounts; 404 otherwise (another site's accounts
    are not theirs to know about)."""
    return get_object_or_404(services.managed_sites(request.user), pk=pk)


@require_GET
@role_required(SITE_ADMIN)
def site_users(request: HttpRequest, pk: int) -> HttpResponse:
    """A site's accounts: roles, active, locked out (with an unlock button)."""
    site = _managed_site(request, pk)
    users = list(services.users_of(site).order_by("username").prefetch_related("groups"))
    locked = services.locked_usernames([u.get_username() for u in users])
    rows = [
        {
            "user": u,
            "roles": ["every role (superuser)"] if u.is_superuser else roles_of(u),
            "locked": u.get_username() in locked,
        }
        for u in users
    ]
    return render(request, "sites/site_users.html", {"site": site, "rows": rows})


@require_POST
@role_required(SITE_ADMIN)
def unlock(request: HttpRequest, pk: int, user_pk: int) -> HttpResponse:
    site = _managed_site(request, pk)
    user = get_object_or_404(services.users_of(site), pk=user_pk)
    try:
        forgotten = services.unlock(actor=request.user, user=user)
    except services.SiteRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            f"{user.get_username()} is unlocked ({forgotten} failed log-in record"
            f"{'s' if forgotten != 1 else ''} forgotten).",
        )
    return redirect("sites:users", pk=site.pk)


@require_GET
@role_required(MODEL_ADMIN)
def validation(request: HttpRequest, pk: int, model: int) -> HttpResponse:
    """The local validation study of a version at a site (audited)."""
    site, version = _study_subjects(pk, model)
    try:
        study = services.validate(site=site, version=version)
    except services.SiteRefused as exc:
        context = {"site": site, "version": version, "refusal": str(exc)}
        return render(request, "sites/validation.html", context, status=409)
    services.record_validation_viewed(actor=request.user, study=study, via="page", request=request)
    context = {"site": site, "version": version, "study": study}
    return render(request, "sites/validation.html", context)


@require_GET
@role_required(MODEL_ADMIN)
def validation_csv(request: HttpRequest, pk: int, model: int) -> HttpResponse:
    site, version = _study_subjects(pk, model)
    try:
        study = services.validate(site=site, version=version)
    except services.SiteRefused as exc:
        return HttpResponse(str(exc), status=409, content_type="text/plain; charset=utf-8")
    services.record_validation_viewed(actor=request.user, study=study, via="csv", request=request)
    response = HttpResponse(services.to_csv(study), content_type="text/csv; charset=utf-8")
    name = f"local-validation-{site.slug}-model-{version.pk}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@require_GET
@role_required(MODEL_ADMIN)
def reliability_plot(request: HttpRequest, pk: int, model: int) -> HttpResponse:
    """The study's reliability plot (SVG; the page that shows it is the audited view)."""
    from ml.models.evaluation import figure_bytes

    site, version = _study_subjects(pk, model)
    try:
        study = services.validate(site=site, version=version, n_bootstrap=0)
    except services.SiteRefused as exc:
        raise Http404(str(exc)) from None
    return HttpResponse(
        figure_bytes(services.reliability_figure(study), fmt="svg"),
        content_type="image/svg+xml",
        headers={"Cache-Control": "private, no-store"},
    )


@require_http_methods(["GET", "POST"])
@role_required(MODEL_ADMIN)
def operating_point(request: HttpRequest, pk: int, model: int) -> HttpResponse:
    """The site's operating point for a version: propose one for a target, apply it, or
    roll back to the one before (each change audited)."""
    site, version = _study_subjects(pk, model)
    form = TargetForm(request.POST or None)
    proposal, status = None, 200
    if request.method == "POST":
        action = request.POST.get("action", "")
        try:
            if action == "rollback":
                restored = services.roll_back(actor=request.user, site=site, version=version)
                messages.success(
                    request,
                    f"Rolled back: {site.name} serves at "
                    + (f"its point {restored.number}." if restored else "the model's own point."),
                )
                return redirect("sites:operating-point", pk=site.pk, model=version.pk)
            if action not in {"propose", "apply"}:
                raise services.SiteInputError("Unknown action.")
            if not form.is_valid():
                status = 400
            elif action == "propose":
                proposal = services.propose(site=site, version=version, **form.cleaned_data)
            else:
                point = services.apply_point(
                    actor=request.user,
                    site=site,
                    version=version,
                    expected_offsets=_posted_offsets(request, version),
                    **form.cleaned_data,
                )
                messages.success(
                    request,
                    f"Point {point.number} applied: {site.name}'s next predictions by "
                    f"{version.name} take their label at it.",
                )
                return redirect("sites:operating-point", pk=site.pk, model=version.pk)
        except services.SiteInputError as exc:
            messages.error(request, str(exc))
            status = 400
        except services.SiteRefused as exc:
            messages.error(request, str(exc))
            status = 409
    context = {
        "site": site,
        "version": version,
        "form": form,
        "proposal": proposal,
        "proposal_offsets": _ordered(proposal.offsets, version) if proposal else [],
        "active": services.active_point(site, version),
        "history": services.history(site, version),
    }
    return render(request, "sites/operating_point.html", context, status=status)


def _ordered(offsets: dict[str, float], version: ModelVersion) -> list[tuple[str, float]]:
    return [(c, offsets[c]) for c in version.classes if c in offsets]


def _posted_offsets(request: HttpRequest, version: ModelVersion) -> dict[str, float] | None:
    """The offsets the proposal showed (hidden fields ``offset-<class>``), or None."""
    posted = {c: request.POST.get(f"offset-{c}") for c in version.classes}
    if any(v is None for v in posted.values()):
        return None
    try:
        return {c: float(str(v)) for c, v in posted.items()}
    except ValueError:
        raise services.SiteInputError("The proposed offsets are not numbers.") from None


def _drift_subjects(request: HttpRequest, pk: int) -> tuple[Site, ModelVersion | None]:
    """The site and the version whose drift is shown: ``?model=<id>`` or the production
    classifier (None when there is none)."""
    site = get_object_or_404(Site, pk=pk)
    model = request.GET.get("model", "")
    if model:
        if not model.isdigit():
            raise Http404("No such model version.")
        return site, _study_subjects(pk, int(model))[1]
    return site, ModelVersion.objects.production(task=Task.CLASSIFICATION)


_LEVEL_PILLS = {
    "none": "status-done",
    "moderate": "status-pending",
    "drift": "status-failed",
    "too few": "status-archived",
}


@require_GET
@role_required(MODEL_ADMIN)
def drift(request: HttpRequest, pk: int) -> HttpResponse:
    """A site's drift against the version's reference: per feature its PSI over time and
    the newest check."""
    from apps.sites import drift as monitor

    site, version = _drift_subjects(request, pk)
    report = monitor.report(site, version)
    for row in report["features"]:
        row["pill"] = _LEVEL_PILLS.get(row["level"], "status-archived")
    context = {
        "site": site,
        "version": version,
        "report": report,
        "features": [{"feature": f, "name": monitor.feature_name(f)} for f in monitor.FEATURES],
    }
    return render(request, "sites/drift.html", context)


@require_GET
@role_required(MODEL_ADMIN)
def drift_plot(request: HttpRequest, pk: int, feature: str) -> HttpResponse:
    """One feature's PSI over time at the site (SVG)."""
    from apps.sites import drift as monitor
    from ml.models.evaluation import figure_bytes

    site, version = _drift_subjects(request, pk)
    if version is None or feature.replace("-", "_") not in monitor.FEATURES:
        raise Http404("No such feature or no production classifier.")
    figure = monitor.drift_figure(site, version, feature.replace("-", "_"))
    return HttpResponse(
        figure_bytes(figure, fmt="svg"),
        content_type="image/svg+xml",
        headers={"Cache-Control": "private, no-store"},
    )

"""Model-admin pages: the registry, a version's evidence, promotion, rollback, training."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.roles import MODEL_ADMIN, role_required
from apps.models import services
from apps.models.models import ModelVersion, TrainingRun
from ml.labels import CLASSES

METRIC_ROWS = [("macro_f1", "macro-F1")] + [
    (f"{c}.{m}", f"{c} {m}") for c in CLASSES for m in ("precision", "recall")
]


def _metric(metrics: dict | None, key: str) -> float | None:
    if not metrics:
        return None
    if "." not in key:
        return metrics.get(key)
    name, metric = key.split(".")
    return metrics.get("per_class", {}).get(name, {}).get(metric)


def comparison_rows(candidate: dict | None, production: dict | None) -> list[dict]:
    rows = []
    for key, label in METRIC_ROWS:
        a, b = _metric(candidate, key), _metric(production, key)
        diff = None if a is None or b is None else a - b
        rows.append({"label": label, "candidate": a, "production": b, "diff": diff})
    return rows


def _evidence(version: ModelVersion) -> tuple[dict | None, dict | None, str]:
    """Candidate vs production metrics, on the same test split when a run measured both."""
    run = getattr(version, "training_run", None)
    if run is not None and run.comparison.get("production"):
        return (
            run.comparison["candidate"],
            run.comparison["production"],
            f"both on snapshot {run.snapshot_id}'s test split "
            f"({run.comparison['test_images']} images)",
        )
    production = services.get_production_version()
    return (
        version.metrics,
        production.metrics if production else None,
        "each on its own test split (no shared measurement yet)",
    )


@require_GET
@role_required(MODEL_ADMIN)
def registry(request: HttpRequest) -> HttpResponse:
    versions = ModelVersion.objects.select_related("snapshot", "parent")
    runs = TrainingRun.objects.select_related("model_version", "requested_by")[:20]
    running = any(not r.is_finished for r in runs)
    return render(
        request,
        "registry/index.html",
        {"versions": versions, "runs": runs, "running": running, "classes": CLASSES},
    )


@require_GET
@role_required(MODEL_ADMIN)
def version_detail(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion, pk=pk)
    candidate, production, basis = _evidence(version)
    return render(
        request,
        "registry/version.html",
        {
            "version": version,
            "rows": comparison_rows(candidate, production),
            "basis": basis,
            "per_source": (version.metrics or {}).get("per_source", {}),
        },
    )


@require_http_methods(["GET", "POST"])
@role_required(MODEL_ADMIN)
def promote(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: the confirmation with the metric differences; POST: promote."""
    version = get_object_or_404(ModelVersion, pk=pk)
    if request.method == "POST":
        try:
            services.promote(version=version, actor=request.user, reason="promoted in the UI")
        except services.RegistryError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"{version.name} now serves all new predictions.")
        return redirect("registry:index")
    candidate, production, basis = _evidence(version)
    return render(
        request,
        "registry/promote_confirm.html",
        {"version": version, "rows": comparison_rows(candidate, production), "basis": basis},
    )


@require_POST
@role_required(MODEL_ADMIN)
def rollback(request: HttpRequest) -> HttpResponse:
    try:
        restored = services.rollback(actor=request.user)
    except services.RegistryError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Rolled back: {restored.name} serves again.")
    return redirect("registry:index")


@require_POST
@role_required(MODEL_ADMIN)
def start_training(request: HttpRequest) -> HttpResponse:
    try:
        run = services.start_training_run(requested_by=request.user)
    except (services.RegistryError, ValueError) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Training run {run.pk} queued on snapshot {run.snapshot_id}.")
    return redirect("registry:index")

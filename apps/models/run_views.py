"""Training runs: the form that starts one (production's recipe, overridable), a run's
page (recipe, progress, log, the paired comparison and the gate's verdict), archiving
a candidate."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.roles import MODEL_ADMIN, role_required
from apps.models import services
from apps.models.models import ModelVersion, TrainingRun
from apps.models.views import COMPARE_ROWS, comparison_rows
from cxrplatform.errors import Refused
from ml.models.metrics import EvaluationResult
from ml.models.recipe import recipe_from_card


class TrainingRunForm(forms.Form):
    """What a model admin may change of production's recipe for one run; a field left
    empty keeps the recipe's value (or the platform's run length for ``epochs``)."""

    epochs = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=500,
        help_text="At most this many epochs (early stopping may end the run sooner).",
    )
    learning_rate = forms.FloatField(required=False, min_value=1e-6, max_value=1.0)
    patience = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=100,
        help_text="Epochs without a better validation loss before training stops.",
    )
    train_from_block = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=16,
        help_text="Pretrained backbones only: the blocks before this one stay frozen.",
    )
    seed = forms.IntegerField(required=False, min_value=0, max_value=2**31 - 1)

    def overrides(self) -> dict[str, Any]:
        """The fields the admin filled in (call after ``is_valid``)."""
        return {k: v for k, v in self.cleaned_data.items() if v is not None}


def recipe_rows(config: dict[str, Any]) -> list[tuple[str, str]]:
    """A run's configuration as label/value rows, in a stable order."""
    return [(key, _shown(value)) for key, value in sorted(config.items())]


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "—"
    return str(value)


def start_form_context() -> dict[str, Any]:
    """What the registry page shows beside "Start a training run": the recipe a run
    would take from production and the form to change it."""
    production = ModelVersion.objects.production()
    recipe = {
        **recipe_from_card(production.card if production is not None else None),
        "epochs": settings.CXR_TRAINING_EPOCHS,
    }
    initial = {k: recipe[k] for k in TrainingRunForm.base_fields if k in recipe}
    return {
        "run_form": TrainingRunForm(initial=initial),
        "recipe_from": production,
        "recipe": recipe_rows(recipe),
    }


@require_POST
@role_required(MODEL_ADMIN)
def start_training(request: HttpRequest) -> HttpResponse:
    form = TrainingRunForm(request.POST)
    if not form.is_valid():
        problems = "; ".join(
            f"{name}: {' '.join(str(e) for e in errors)}" for name, errors in form.errors.items()
        )
        messages.error(request, f"No run was started: {problems}")
        return redirect("registry:index")
    try:
        run = services.start_training_run(requested_by=request.user, config=form.overrides())
    except Refused as exc:  # another run is active, or no data to snapshot
        messages.error(request, str(exc))
        return redirect("registry:index")
    messages.success(request, f"Training run {run.pk} queued on snapshot {run.snapshot_id}.")
    return redirect("registry:run", pk=run.pk)


@require_GET
@role_required(MODEL_ADMIN)
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One run: its recipe, progress, log and, once done, its candidate against the
    production version of the time on the same test images, with the gate's verdict."""
    run = get_object_or_404(
        TrainingRun.objects.select_related("snapshot", "requested_by", "model_version"), pk=pk
    )
    comparison = run.comparison or {}
    production_pk = comparison.get("production_version")
    production = ModelVersion.objects.filter(pk=production_pk).first() if production_pk else None
    candidate = EvaluationResult.from_json_or_none(comparison.get("candidate"))
    served = EvaluationResult.from_json_or_none(comparison.get("production"))
    paired = run.paired
    n = comparison.get("test_images")
    return render(
        request,
        "registry/run.html",
        {
            "run": run,
            "recipe": recipe_rows(run.config or {}),
            "production": production,
            "rows": comparison_rows(candidate, served, COMPARE_ROWS, paired=paired)
            if candidate is not None
            else [],
            "paired": paired,
            "basis": f"both on the same {n} images (snapshot {run.snapshot_id}'s test split)"
            if served is not None
            else f"on {n} test images; no production version served when it ran",
            "gate": comparison.get("gate") or {},
            "candidate": run.model_version,
        },
    )


@require_POST
@role_required(MODEL_ADMIN)
def archive(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion, pk=pk)
    try:
        services.archive(
            version=version,
            actor=request.user,
            reason=str(request.POST.get("reason", ""))[:500] or "archived in the UI",
        )
    except services.RegistryError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"#{version.pk} {version.name} archived.")
    return redirect(reverse("registry:version", args=[version.pk]))

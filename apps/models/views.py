"""Model-admin pages: the registry, a version's evidence, promotion, rollback, training."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.roles import MODEL_ADMIN, role_required
from apps.models import notifications, operating_points, services
from apps.models.models import TASKS, ModelVersion, Task, TrainingRun
from ml.data.labels import CLASS_DISPLAY, CLASSES
from ml.models.metrics import EvaluationResult
from ml.models.paired import PairedComparison

METRIC_ROWS = [("macro_f1", "macro-F1")] + [
    (f"{c}.{m}", f"{CLASS_DISPLAY[c]} {m}") for c in CLASSES for m in ("precision", "recall")
]
# The side-by-side comparison shows every headline figure.
COMPARE_ROWS = [
    ("macro_f1", "macro-F1"),
    ("accuracy", "accuracy"),
    ("roc_auc_macro", "macro ROC-AUC"),
    ("ece", "calibration error (ECE, lower is better)"),
] + [
    (f"{c}.{key}", f"{CLASS_DISPLAY[c]} {label}")
    for c in CLASSES
    for key, label in (("precision", "precision"), ("recall", "recall"), ("f1", "F1"))
]
PLOTS = {
    "confusion-matrix": "figure_confusion_matrix",
    "roc": "figure_roc",
    "calibration": "figure_calibration",
}


VERDICT_TEXT = {
    "better": "better beyond chance",
    "worse": "worse beyond chance",
    "undecided": "cannot tell apart",
    "too_few": "too few images to tell",
}


def comparison_rows(
    candidate: EvaluationResult | None,
    production: EvaluationResult | None,
    keys: list[tuple[str, str]] = METRIC_ROWS,
    paired: PairedComparison | None = None,
) -> list[dict]:
    """One row per figure: both values, the difference (candidate - production) and,
    only where both were scored on the same images (``paired``), its paired interval
    and verdict. Without a paired measurement no row is called better or worse: the
    difference then mixes the models with their test sets."""
    rows = []
    for key, label in keys:
        figure = paired.figure(key) if paired is not None else None
        a: float | None
        b: float | None
        if figure is not None:
            a, b = figure.b, figure.a
        else:
            a = candidate.metric(key) if candidate else None
            b = production.metric(key) if production else None
        diff = None if a is None or b is None else a - b
        verdict = figure.verdict if figure is not None else None
        rows.append(
            {
                "key": key,
                "label": label,
                "candidate": a,
                "production": b,
                "diff": diff,
                "ci": figure.ci if figure is not None else None,
                "verdict": verdict,
                "verdict_text": VERDICT_TEXT.get(verdict or "", ""),
            }
        )
    return rows


def per_class_rows(result: EvaluationResult | None) -> list[dict]:
    per_class = result.per_class if result else {}
    return [{"name": name, "m": per_class[name]} for name in CLASSES if name in per_class]


def confusion_rows(result: EvaluationResult | None) -> dict | None:
    matrix = result.confusion_matrix if result else None
    if matrix is None:
        return None
    return {"labels": matrix.labels, "rows": matrix.rows()}


def shortcut_rows(*results: EvaluationResult | None) -> list[dict] | None:
    """The shortcut tests of one or more versions, one row per figure (None: none measured).

    Each row has the figure's label and target, and per version a cell with the value,
    its interval and whether the target is met (None where that version lacks it).
    """
    tested = [r.shortcuts if r else None for r in results]
    if all(shortcuts is None for shortcuts in tested):
        return None
    rows: dict[str, dict] = {}
    for i, shortcuts in enumerate(tested):
        for check in shortcuts.checks() if shortcuts else []:
            row = rows.setdefault(
                check.key,
                {"label": check.label, "target": check.target, "cells": [None] * len(results)},
            )
            row["cells"][i] = check
    return list(rows.values())


def per_source_rows(a: EvaluationResult | None, b: EvaluationResult | None) -> list[dict]:
    """Both versions' figures per data source, one row per source either was measured on
    (a model that works on one source only shows here, not in the overall figures)."""
    per_a = a.per_source if a else {}
    per_b = b.per_source if b else {}
    rows = []
    for source in sorted(set(per_a) | set(per_b)):
        sa, sb = per_a.get(source), per_b.get(source)
        diff = None if sa is None or sb is None else sb.accuracy - sa.accuracy
        rows.append({"source": source, "a": sa, "b": sb, "accuracy_diff": diff})
    return rows


def training_rows(card: dict) -> list[tuple[str, str]]:
    """How a version was built, from its card: what a model admin checks before promoting
    (architecture, input, preprocessing, the measures against shortcuts, the operating
    point). Keys missing from older cards are left out."""
    rows: list[tuple[str, str]] = []
    hyper = card.get("hyperparameters") or {}
    pre = card.get("preprocessing") or {}
    if card.get("architecture") == "efficientnet_lite0":
        first = hyper.get("train_from_block", 0)
        tuned = f"blocks {first}-15 and head fine-tuned" if first else "every layer fine-tuned"
        rows.append(("architecture", f"efficientnet_lite0, ImageNet weights, {tuned}"))
    elif card.get("architecture"):
        width = f", width {hyper['width']}" if hyper.get("width") else ""
        rows.append(("architecture", f"{card['architecture']}{width}"))
    if pre:
        version = pre.get("version", 1)
        text = f"v{version}, {pre.get('input_size', '?')} px"
        if version >= 2:
            text += ", lung frame + CLAHE"
            if pre.get("mask_outside"):
                text += f", zero outside the lungs (dilated {pre.get('mask_dilation', 0):g})"
            segmenter = (pre.get("segmenter") or {}).get("version")
            if segmenter:
                text += f", lungs by {segmenter}"
        else:
            text += ", whole image letterboxed"
        rows.append(("preprocessing", text))
    measures = [
        label
        for key, label in (
            ("balanced_sampling", "sampling balanced over source x class"),
            ("acquisition_augment", "acquisition augmentation"),
        )
        if hyper.get(key)
    ]
    if hyper.get("lung_penalty"):
        measures.append(f"lung penalty {hyper['lung_penalty']:g} on {hyper.get('penalty_on')}")
    if hyper:
        rows.append(("against shortcuts", ", ".join(measures) or "none"))
    point = card.get("operating_point")
    if point:
        # In class order: a jsonb column does not keep the card's key order.
        given = point.get("offsets", {})
        order = [c for c in card.get("classes", []) if c in given]
        order += sorted(set(given) - set(order))
        offsets = ", ".join(f"{k} {given[k]:+g}" for k in order)
        rows.append(
            (
                "operating point",
                f"logit offsets {offsets} chosen on validation (macro-F1 "
                f"{point.get('val_macro_f1_before', 0):.3f} -> "
                f"{point.get('val_macro_f1_after', 0):.3f})",
            )
        )
    elif hyper:
        rows.append(("operating point", "argmax"))
    training = card.get("training") or {}
    if training.get("epochs_run"):
        rows.append(
            ("training", f"{training['epochs_run']} epochs, {training.get('seconds', '?')} s")
        )
    return rows


def _has_curves(result: EvaluationResult | None) -> bool:
    return bool(result and result.curves)


@require_GET
@role_required(MODEL_ADMIN)
def registry(request: HttpRequest) -> HttpResponse:
    from apps.models.run_views import start_form_context

    versions = ModelVersion.objects.select_related("snapshot", "parent")
    runs = TrainingRun.objects.select_related("model_version", "requested_by")[:20]
    classifiers = versions.filter(task=Task.CLASSIFICATION)
    # Every other task (the segmenters) in a section of its own, as TASKS describes it.
    sections = [
        {
            "task": task,
            "label": Task(task).label,
            "spec": spec,
            "versions": versions.filter(task=task),
            "production": ModelVersion.objects.production(task=task),
            "rollback_to": services.rollback_target(task),
        }
        for task, spec in TASKS.items()
        if task != Task.CLASSIFICATION
    ]
    # Archived candidates (never promoted) are set aside: listed only on request.
    show_archived = request.GET.get("archived") == "1"
    set_aside = classifiers.filter(status=ModelVersion.Status.ARCHIVED, promoted_at__isnull=True)
    return render(
        request,
        "registry/index.html",
        {
            "versions": classifiers if show_archived else classifiers.exclude(pk__in=set_aside),
            "archived_hidden": 0 if show_archived else set_aside.count(),
            "sections": sections,
            "rollback_to": services.rollback_target(Task.CLASSIFICATION),
            **start_form_context(),
            "runs": runs,
            "classes": CLASSES,
            "notifications": notifications.for_user(request.user)[:5],
            "unread_notifications": notifications.unread_count(request.user),
        },
    )


@require_GET
@role_required(MODEL_ADMIN)
def version_detail(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion, pk=pk)
    if not version.is_classifier:
        return render(
            request,
            "registry/version_ct.html",
            {
                "version": version,
                "spec": version.task_spec,
                "metrics": version.ct_metrics,
                "production": ModelVersion.objects.production(task=version.task),
                "preprocessing": version.card.get("preprocessing") or {},
            },
        )
    evaluation = version.evaluation
    evidence = services.promotion_evidence(version)
    return render(
        request,
        "registry/version.html",
        {
            "version": version,
            "evaluation": evaluation,
            "rows": comparison_rows(
                evidence.candidate, evidence.production, paired=evidence.paired
            ),
            "basis": evidence.basis,
            "paired": evidence.paired,
            "per_class": per_class_rows(evaluation),
            "confusion": confusion_rows(evaluation),
            "has_curves": _has_curves(evaluation),
            "per_source": evaluation.per_source if evaluation else {},
            "shortcuts": shortcut_rows(evaluation),
            "shortcut_headers": ["this version"],
            "training": training_rows(version.card),
            "point": operating_points.summary(version),
            "others": ModelVersion.objects.filter(task=version.task).exclude(pk=version.pk),
        },
    )


@require_GET
@role_required(MODEL_ADMIN)
def version_plot(request: HttpRequest, pk: int, kind: str) -> HttpResponse:
    """A plot drawn from the version's stored metrics (SVG): no test images needed."""
    import ml.models.evaluation

    version = get_object_or_404(ModelVersion, pk=pk)
    evaluation = version.evaluation
    try:
        if kind == "operating-point":  # drawn from the card's operating curve
            figure = operating_points.figure(version, title=version.name)
        elif kind in PLOTS and evaluation is not None:
            figure = getattr(ml.models.evaluation, PLOTS[kind])(evaluation, title=version.name)
        else:
            raise Http404("No such plot for this version.")
    except (KeyError, ValueError) as exc:
        raise Http404(f"This version's metrics cannot draw it: {exc}") from None
    return HttpResponse(
        ml.models.evaluation.figure_bytes(figure, fmt="svg"),
        content_type="image/svg+xml",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@require_GET
@role_required(MODEL_ADMIN)
def training_animation(request: HttpRequest, pk: int) -> FileResponse:
    """Grad-CAM on fixed validation images after each training epoch (GIF)."""
    version = get_object_or_404(ModelVersion, pk=pk)
    if not version.training_animation:
        raise Http404("This version has no training animation.")
    try:
        handle = version.training_animation.open("rb")
    except FileNotFoundError:
        raise Http404("The animation is missing from storage.") from None
    return FileResponse(handle, content_type="image/gif")


@require_GET
@role_required(MODEL_ADMIN)
def compare(request: HttpRequest) -> HttpResponse:
    """Any two versions side by side: headline metrics, per-source table, shortcut tests,
    confusion matrices, ROC and calibration plots and the training animations."""
    versions = list(
        ModelVersion.objects.filter(task=Task.CLASSIFICATION).select_related("snapshot")
    )
    by_pk = {str(v.pk): v for v in versions}
    a, b = by_pk.get(request.GET.get("a", "")), by_pk.get(request.GET.get("b", ""))
    if a is None and len(versions) >= 2:
        a = next((v for v in versions if v.status == ModelVersion.Status.PRODUCTION), versions[1])
    if b is None and len(versions) >= 2:
        b = next(v for v in versions if v != a)
    context: dict[str, Any] = {"versions": versions, "a": a, "b": b}
    if a is not None and b is not None:
        evaluation_a, evaluation_b = a.evaluation, b.evaluation
        shared = services.measured_together(a, b) if a != b else None
        paired = shared.paired if shared is not None else None
        if shared is not None and shared.a is not None and shared.b is not None:
            # Both sides as the run measured them, on the same images.
            evaluation_a, evaluation_b = shared.a, shared.b
        context.update(
            rows=comparison_rows(evaluation_b, evaluation_a, COMPARE_ROWS, paired=paired),
            paired=paired,
            n_a=evaluation_a.n if evaluation_a else None,
            n_b=evaluation_b.n if evaluation_b else None,
            shortcuts=shortcut_rows(evaluation_a, evaluation_b),
            shortcut_headers=[f"A: #{a.pk} {a.name}", f"B: #{b.pk} {b.name}"],
            per_source=per_source_rows(evaluation_a, evaluation_b),
            sides=[
                {
                    "version": v,
                    "confusion": confusion_rows(evaluation),
                    "has_curves": _has_curves(evaluation),
                }
                for v, evaluation in ((a, evaluation_a), (b, evaluation_b))
            ],
        )
    return render(request, "registry/compare.html", context)


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
            messages.success(
                request, f"{version.name} now serves all new {version.task_spec.serves}."
            )
        return redirect("registry:index")
    evidence = services.promotion_evidence(version)
    return render(
        request,
        "registry/promote_confirm.html",
        {
            "version": version,
            "rows": comparison_rows(
                evidence.candidate, evidence.production, paired=evidence.paired
            ),
            "basis": evidence.basis,
            "paired": evidence.paired,
            "refusals": services.promotion_refusals(version),
            "shortcuts": shortcut_rows(version.evaluation, _served_evaluation(evidence)),
            "shortcut_headers": ["this version", "production"],
        },
    )


@require_http_methods(["GET", "POST"])
@role_required(MODEL_ADMIN)
def operating_point(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: the chosen curve row (``row``) or the card's point (``reset=1``) beside the
    point served now, to confirm; POST: serve at it (audited). A row that is not on the
    version's curve is a 400, a version without a curve a 409; nothing is written."""
    version = get_object_or_404(ModelVersion, pk=pk)
    data = request.POST if request.method == "POST" else request.GET
    reset = data.get("reset") == "1"
    try:
        offsets = None if reset else operating_points.row_offsets(version, data.get("row"))
        if reset and not operating_points.summary(version):
            raise services.RegistryError(f"#{version.pk} has no card's point to go back to.")
        if request.method == "POST":
            services.set_operating_point(
                version=version,
                actor=request.user,
                offsets=offsets,
                reset=reset,
                reason=str(data.get("reason", ""))[:500] or "chosen in the UI",
            )
    except services.RegistryError as exc:
        status = 400 if isinstance(exc, services.OperatingPointError) else 409
        return render(
            request,
            "registry/operating_point_confirm.html",
            {"version": version, "error": str(exc)},
            status=status,
        )
    if request.method == "POST":
        version.refresh_from_db()
        served = ", ".join(f"{c} {v:+g}" for c, v in (version.active_offsets or {}).items())
        messages.success(request, f"{version.name} now serves at offsets {served}.")
        return redirect(reverse("registry:version", args=[version.pk]) + "#operating-point")
    rows = operating_points.curve_rows(version)
    current = next((r for r in rows if r["active"]), None)
    # The row was checked by row_offsets above.
    proposed = next((r for r in rows if r["card"]), None) if reset else rows[int(data["row"])]
    point = operating_points.summary(version)
    figures = [
        (
            label,
            current["figures"][i] if current else None,
            proposed["figures"][i] if proposed else None,
        )
        for i, label in enumerate(point["columns"] if point else [])
    ]
    return render(
        request,
        "registry/operating_point_confirm.html",
        {
            "version": version,
            "point": point,
            "proposed_offsets": (
                proposed["offsets"] if proposed else (point or {}).get("card_offsets")
            ),
            "figures": figures,
            "row": proposed["index"] if proposed else None,
            "reset": reset,
        },
    )


def _served_evaluation(evidence: services.Evidence) -> EvaluationResult | None:
    served = evidence.production_version
    return served.evaluation if served is not None else None


@require_POST
@role_required(MODEL_ADMIN)
def rollback(request: HttpRequest) -> HttpResponse:
    task = request.POST.get("task") or Task.CLASSIFICATION
    if task not in Task.values:
        messages.error(request, f"Unknown task {task!r}.")
        return redirect("registry:index")
    try:
        restored = services.rollback(actor=request.user, task=task)
    except services.RegistryError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Rolled back: {restored.name} serves again.")
    return redirect("registry:index")

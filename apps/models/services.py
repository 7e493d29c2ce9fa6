"""Model registry services: register, promote, roll back, train.

Each state change is one transaction and writes an audit event.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts.models import record
from apps.models.models import TASKS, ModelVersion, Task, TrainingRun
from cxrplatform.errors import Refused
from cxrplatform.files import StoredFiles, files_removed_on_error
from cxrplatform.jobs import enqueue_job
from cxrplatform.locks import serialize
from ml.models.metrics import EvaluationResult, MetricsFormatError, ShortcutMetrics
from ml.models.paired import PairedComparison, PairedFigure

log = logging.getLogger(__name__)


class RegistryError(Refused):
    pass


class ConcurrentChangeError(RegistryError):
    """Another request changed the same thing at the same moment; nothing was written."""


class PromotionGateError(RegistryError):
    """The promotion gate refused a candidate; ``reasons`` says why, one sentence each."""

    def __init__(self, version: ModelVersion, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__(f"#{version.pk} {version.name} cannot be promoted: " + " ".join(reasons))


# --- the evidence a promotion is judged on ---------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """Candidate and production metrics, and on which images they were measured."""

    candidate: EvaluationResult | None
    production: EvaluationResult | None
    production_version: ModelVersion | None
    basis: str
    same_split: bool
    # Both models' calls on the same images, B (candidate) - A (production): set when a
    # training run measured the pair (ml.models.paired).
    paired: PairedComparison | None = None


def promotion_evidence(version: ModelVersion) -> Evidence:
    """What the promote page shows and the gate judges: the same split when a run measured both.

    A training run measures its candidate and the production version of the time on
    the snapshot's test split; that pair is used while that version still serves.
    Otherwise each version's own stored metrics are compared (each on its own split).
    Versions are compared with the production version of their own task.
    """
    production = ModelVersion.objects.production(task=version.task)
    run = getattr(version, "training_run", None)
    comparison = run.comparison if run is not None else {}
    if (
        run is not None
        and comparison.get("production")
        and production is not None
        and comparison.get("production_version") == production.pk
    ):
        return Evidence(
            candidate=EvaluationResult.from_json_or_none(comparison.get("candidate")),
            production=EvaluationResult.from_json_or_none(comparison["production"]),
            production_version=production,
            basis=(
                f"both on the same {comparison.get('test_images')} images "
                f"(snapshot {run.snapshot_id}'s test split)"
            ),
            same_split=True,
            paired=PairedComparison.from_json_or_none(comparison.get("paired")),
        )
    own = version.evaluation
    served = production.evaluation if production is not None else None
    return Evidence(
        candidate=own,
        production=served,
        production_version=production,
        basis=(
            f"on different images: this version on {_images(own)}, production on "
            f"{_images(served)} (each its own test split); the differences mix the models "
            "with the test sets, so none is called better or worse"
        ),
        same_split=False,
    )


def _images(result: EvaluationResult | None) -> str:
    return (
        f"{result.n} images"
        if result is not None and result.n
        else "an unrecorded number of images"
    )


@dataclass(frozen=True)
class SharedMeasurement:
    """Two versions measured together by a training run on the same test images."""

    run: TrainingRun
    a: EvaluationResult | None
    b: EvaluationResult | None
    paired: PairedComparison | None  # B - A


def measured_together(a: ModelVersion, b: ModelVersion) -> SharedMeasurement | None:
    """What a training run measured of ``a`` and ``b`` on the same images (one its
    candidate, the other the production version of the time), read as B - A; None when
    no run measured the two together."""
    for candidate, production, flip in ((b, a, False), (a, b, True)):
        run = TrainingRun.objects.filter(model_version=candidate).first()
        comparison = run.comparison if run is not None else {}
        if run is None or comparison.get("production_version") != production.pk:
            continue
        ours = EvaluationResult.from_json_or_none(comparison.get("candidate"))
        theirs = EvaluationResult.from_json_or_none(comparison.get("production"))
        paired = PairedComparison.from_json_or_none(comparison.get("paired"))
        if flip:
            return SharedMeasurement(
                run=run, a=ours, b=theirs, paired=_flipped(paired) if paired else None
            )
        return SharedMeasurement(run=run, a=theirs, b=ours, paired=paired)
    return None


def _flipped(paired: PairedComparison) -> PairedComparison:
    """A - B instead of B - A."""
    swap = {"better": "worse", "worse": "better"}
    figures = tuple(
        PairedFigure(
            key=f.key,
            a=f.b,
            b=f.a,
            diff=-f.diff,
            ci=(-f.ci[1], -f.ci[0]),
            verdict=swap.get(f.verdict, f.verdict),
            lower_is_better=f.lower_is_better,
        )
        for f in paired.figures
    )
    agreement = dict(paired.agreement)
    agreement["only_a_right"], agreement["only_b_right"] = (
        paired.agreement.get("only_b_right", 0),
        paired.agreement.get("only_a_right", 0),
    )
    return PairedComparison(
        n=paired.n,
        patients=paired.patients,
        resamples=paired.resamples,
        confidence=paired.confidence,
        min_images=paired.min_images,
        figures=figures,
        agreement=agreement,
    )


def _shortcuts_of(evidence: Evidence, version: ModelVersion) -> tuple[ShortcutMetrics | None, ...]:
    """The shortcut tests of both sides: from the shared split when both were measured
    there, else each version's own (the production of a run's time may lack them)."""
    candidate = evidence.candidate.shortcuts if evidence.candidate else None
    production = evidence.production.shortcuts if evidence.production else None
    if evidence.same_split and candidate is not None and production is not None:
        return candidate, production
    own = version.evaluation
    served = evidence.production_version.evaluation if evidence.production_version else None
    return (own.shortcuts if own else None), (served.shortcuts if served else None)


# --- the promotion gate ----------------------------------------------------------------------


def shortcut_gate_refusals(
    candidate: ShortcutMetrics | None,
    production: ShortcutMetrics | None,
    *,
    blanked_tolerance: float | None = None,
    mass_tolerance: float | None = None,
    held_out_tolerance: float | None = None,
) -> list[str]:
    """Why a candidate's shortcut tests are worse than production's (empty: not worse).

    Three kinds of figure decide, each with a tolerance from the settings
    (``CXR_GATE_BLANKED_ACC_TOLERANCE``, ``CXR_GATE_LUNG_MASS_TOLERANCE``,
    ``CXR_GATE_HELD_OUT_TOLERANCE``): the accuracy with the lungs blanked (higher is
    worse: the model classifies without the lungs), the lowest per-source Grad-CAM mass
    in the lungs (lower is worse), and for every source production has one, the share of
    that source's normals called normal by the recipe trained without them (lower is
    worse: the model would fail more normals at a new site). A figure production has
    and the candidate lacks is a refusal: "not measured" must not pass as "no worse".
    Production without shortcut tests (older versions) refuses nothing.
    """
    if production is None:
        return []
    blanked_tolerance = (
        settings.CXR_GATE_BLANKED_ACC_TOLERANCE if blanked_tolerance is None else blanked_tolerance
    )
    mass_tolerance = (
        settings.CXR_GATE_LUNG_MASS_TOLERANCE if mass_tolerance is None else mass_tolerance
    )
    if candidate is None:
        return [
            "It has no shortcut tests, but production has: evaluate it with lung masks "
            "(preprocessing version 2) before promoting."
        ]
    reasons = []
    ours, theirs = candidate.lungs_blanked_accuracy, production.lungs_blanked_accuracy
    if theirs is not None and ours is None:
        reasons.append("Its lungs-blanked accuracy was not measured; production's was.")
    elif theirs is not None and ours is not None and ours > theirs + blanked_tolerance:
        reasons.append(
            f"With the lungs blanked it is still {ours:.3f} accurate, more than production's "
            f"{theirs:.3f} (tolerance {blanked_tolerance:.3f}): it relies more on what lies "
            "outside the lungs."
        )
    ours, theirs = candidate.min_mass_in_lungs, production.min_mass_in_lungs
    if theirs is not None and ours is None:
        reasons.append("Its Grad-CAM mass in the lungs was not measured; production's was.")
    elif theirs is not None and ours is not None and ours < theirs - mass_tolerance:
        reasons.append(
            f"Its lowest per-source Grad-CAM mass in the lungs is {ours:.3f}, below "
            f"production's {theirs:.3f} (tolerance {mass_tolerance:.3f}): its explanations "
            "look outside the lungs more."
        )
    held_out_tolerance = (
        settings.CXR_GATE_HELD_OUT_TOLERANCE if held_out_tolerance is None else held_out_tolerance
    )
    for source, served in sorted(production.held_out_normals.items()):
        mine = candidate.held_out_normals.get(source)
        theirs = served.share
        ours = mine.share if mine is not None else None
        if theirs is None:
            continue
        if ours is None:
            reasons.append(
                f"Its recipe was not trained without the normals of {source}; production's "
                f"was (it called {theirs:.3f} of them normal)."
            )
        elif ours < theirs - held_out_tolerance:
            reasons.append(
                f"Trained without the normals of {source}, its recipe calls {ours:.3f} of them "
                f"normal, below production's {theirs:.3f} (tolerance {held_out_tolerance:.3f}): "
                "it would fail more normals at a site it never saw."
            )
    return reasons


TRACKED_METRICS = ("precision", "recall")


def metric_gate_refusals(
    candidate: EvaluationResult | None, production: EvaluationResult | None
) -> list[str]:
    """Why a candidate is worse than production on the tracked metrics (macro-F1, and
    precision and recall of every class production was measured on)."""
    if candidate is None or production is None:
        return ["Candidate and production were not both measured on the same images."]
    reasons = []
    if candidate.macro_f1 < production.macro_f1:
        reasons.append(
            f"Macro-F1 {candidate.macro_f1:.3f} is below production's {production.macro_f1:.3f}."
        )
    for name, row in production.per_class.items():
        ours = candidate.per_class.get(name)
        for metric in TRACKED_METRICS:
            theirs = getattr(row, metric)
            value = getattr(ours, metric) if ours is not None else None
            if value is None or value < theirs:
                shown = "not measured" if value is None else f"{value:.3f}"
                reasons.append(f"{name} {metric} {shown} is below production's {theirs:.3f}.")
    return reasons


def _figure_label(key: str) -> str:
    if key == "macro_f1":
        return "Macro-F1"
    if key == "accuracy":
        return "Accuracy"
    name, _, metric = key.partition(".")
    return f"{name} {metric}"


def _interval(figure: PairedFigure, paired: PairedComparison) -> str:
    return (
        f"{figure.diff:+.3f} (paired {paired.confidence:.0%} interval {figure.ci[0]:+.3f} to "
        f"{figure.ci[1]:+.3f})"
    )


def paired_gate_refusals(paired: PairedComparison) -> list[str]:
    """Why the automatic gate refuses a candidate on its paired comparison with
    production (empty: it passes on the metrics).

    Too few images decide nothing, so they refuse (a model admin may still promote by
    hand, having read the figures). Otherwise a tracked figure (macro-F1, every class's
    precision and recall) worse beyond chance refuses, and so does a lower macro-F1 the
    images cannot tell from production's: an automatic promotion needs no loss.
    """
    if not paired.decidable:
        return [
            f"Only {paired.n} test images: too few to tell the candidate from production "
            f"(at least {paired.min_images} are needed, CXR_COMPARE_MIN_IMAGES). Read the "
            "figures and promote by hand if they convince you."
        ]
    reasons = []
    for figure in paired.figures:
        if figure.key == "accuracy":
            continue
        if figure.verdict == "worse":
            reasons.append(
                f"{_figure_label(figure.key)} is worse beyond chance: "
                f"{_interval(figure, paired)} on {paired.n} images."
            )
        elif figure.key == "macro_f1" and figure.diff < 0:
            reasons.append(
                f"Macro-F1 is lower, {_interval(figure, paired)} on {paired.n} images: the "
                "images cannot tell the two apart, and an automatic promotion needs no loss."
            )
    return reasons


def gate_summary(comparison: dict, refusals: list[str]) -> str:
    """One sentence on the evidence behind the automatic gate's verdict, for the run
    page and the notification: on how many images, and the macro-F1 difference."""
    paired = PairedComparison.from_json_or_none(comparison.get("paired"))
    verdict = "refused" if refusals else "passed"
    if paired is None:
        n = comparison.get("test_images")
        return f"The gate {verdict} on point figures of {n} test images (no paired measurement)."
    macro = paired.figure("macro_f1")
    figure = f"macro-F1 {_interval(macro, paired)}" if macro is not None else "no macro-F1"
    if refusals:
        return f"The gate refused, on the same {paired.n} test images: {figure}."
    return (
        f"The gate passed, on the same {paired.n} test images ({paired.patients} patients): "
        f"{figure}; no tracked figure worse beyond chance, shortcut tests no worse."
    )


def promotion_refusals(version: ModelVersion) -> list[str]:
    """Why promoting ``version`` now would be refused (empty: the gate lets it through).

    Every promotion (the page, the API, the schedule) passes the shortcut gate; a
    rollback does not (it restores a version that served before, in an emergency). The
    gate judges classifiers' shortcut tests; a CT segmenter has none to judge.
    """
    if not version.is_classifier:
        return []
    evidence = promotion_evidence(version)
    if evidence.production_version is None or evidence.production_version.pk == version.pk:
        return []
    candidate, production = _shortcuts_of(evidence, version)
    return shortcut_gate_refusals(candidate, production)


def auto_promotion_refusals(
    comparison: dict, production_version: ModelVersion | None = None
) -> list[str]:
    """Why a training run's candidate is not promoted automatically (empty: promote it).

    Stricter than a model admin's promotion: no tracked metric may be worse than
    production's on the same test split (with a paired measurement, worse beyond chance;
    see :func:`paired_gate_refusals`), and the shortcut tests must not be worse.
    When the run measured production without shortcut tests, ``production_version``'s
    own stored ones are used (measured on its own split), so they still count.
    """
    try:
        candidate = EvaluationResult.from_json_or_none(comparison.get("candidate"))
        production = EvaluationResult.from_json_or_none(comparison.get("production"))
    except MetricsFormatError as exc:
        return [f"The run's metrics cannot be read: {exc}."]
    reasons = metric_gate_refusals(candidate, production)
    if candidate is None or production is None:
        return reasons
    paired = PairedComparison.from_json_or_none(comparison.get("paired"))
    if paired is not None:  # the same images, paired: judged with its intervals
        reasons = paired_gate_refusals(paired)
    production_shortcuts = production.shortcuts
    if production_shortcuts is None and production_version is not None:
        served = production_version.evaluation
        production_shortcuts = served.shortcuts if served is not None else None
    return reasons + shortcut_gate_refusals(candidate.shortcuts, production_shortcuts)


def _state(version: ModelVersion | None) -> dict:
    if version is None:
        return {}
    return {
        "version": version.pk,
        "name": version.name,
        "status": version.status,
        "task": version.task,
    }


def promote(
    *, version: ModelVersion, actor=None, reason: str = "", gate: bool = True
) -> ModelVersion:
    """Archive the current production version of ``version``'s task and promote
    ``version``, in one transaction (:func:`_promote`). Two promotions at the same
    moment: the database's one-production-per-task constraint lets one through and the
    other is refused with a :class:`ConcurrentChangeError` (a 409), not a server error."""
    try:
        with transaction.atomic():
            return _promote(version=version, actor=actor, reason=reason, gate=gate)
    except IntegrityError as exc:
        if "registry_one_production_version_per_task" not in str(exc):
            raise
        raise ConcurrentChangeError(
            f"Another version of this task was promoted at the same moment; #{version.pk} "
            "was not promoted. Reload the registry and decide again."
        ) from None


def _promote(
    *, version: ModelVersion, actor=None, reason: str = "", gate: bool = True
) -> ModelVersion:
    """Archive the current production version of ``version``'s task and promote
    ``version``, in one transaction.

    The partial unique constraint guarantees that a concurrent promotion
    cannot leave two production rows of one task: one of the two transactions fails.
    Workers pick the new model up on their next task (no restart).

    ``gate``: refuse (:class:`PromotionGateError`, with the reasons) a candidate whose
    shortcut tests are worse than production's (:func:`promotion_refusals`). Only a
    rollback passes ``gate=False``.
    """
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.status == ModelVersion.Status.PRODUCTION:
        return version
    if version.status not in {ModelVersion.Status.CANDIDATE, ModelVersion.Status.ARCHIVED}:
        raise RegistryError(f"A {version.status} model version cannot be promoted.")
    previous = ModelVersion.objects.select_for_update().production(task=version.task)
    refusals = promotion_refusals(version) if gate else []
    if refusals:
        log.info("promotion of %s refused: %s", version, " ".join(refusals))
        raise PromotionGateError(version, refusals)
    if previous is not None:
        previous.status = ModelVersion.Status.ARCHIVED
        previous.save(update_fields=["status"])
    version.status = ModelVersion.Status.PRODUCTION
    version.promoted_at = timezone.now()
    version.save(update_fields=["status", "promoted_at"])
    record(
        actor=actor,
        action="model.promote",
        target=version,
        before={"production": _state(previous)},
        after={"production": _state(version), "reason": reason},
    )
    log.info("promoted model version %s (%s)", version, reason or "manual")
    return version


def rollback_target(task: str = Task.CLASSIFICATION) -> ModelVersion | None:
    """The version a rollback of ``task`` would restore: the most recently promoted one
    that no longer serves (None: nothing serves, or nothing served before it). The pages
    offer a rollback only when there is one."""
    current = ModelVersion.objects.production(task=task)
    if current is None:
        return None
    return (
        ModelVersion.objects.filter(
            task=task, status=ModelVersion.Status.ARCHIVED, promoted_at__isnull=False
        )
        .exclude(pk=current.pk)
        .order_by("-promoted_at")
        .first()
    )


@transaction.atomic
def archive(*, version: ModelVersion, actor=None, reason: str = "") -> ModelVersion:
    """Set a candidate (or a failed version) aside: it leaves the registry's list of
    versions to decide on, keeps its files and evidence, and can still be promoted later.
    The serving version cannot be archived (promote another, or roll back). Audited."""
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.status == ModelVersion.Status.ARCHIVED:
        return version
    if version.status not in {ModelVersion.Status.CANDIDATE, ModelVersion.Status.FAILED}:
        raise RegistryError(
            f"#{version.pk} {version.name} is {version.status}: only a candidate can be "
            "archived (promote another version or roll back to replace production)."
        )
    before = version.status
    version.status = ModelVersion.Status.ARCHIVED
    version.save(update_fields=["status"])
    record(
        actor=actor,
        action="model.archive",
        target=version,
        before={"status": before},
        after={"status": version.status, "reason": reason},
    )
    return version


@transaction.atomic
def rollback(*, actor=None, task: str = Task.CLASSIFICATION) -> ModelVersion:
    """Make the previous production version of ``task`` serve again."""
    current = ModelVersion.objects.production(task=task)
    if current is None:
        raise RegistryError(
            f"There is no production version of {Task(task).label.lower()} to roll back."
        )
    previous = rollback_target(task)
    if previous is None:
        raise RegistryError("No earlier production version to roll back to.")
    restored = promote(
        version=previous, actor=actor, reason=f"rollback from {current.pk}", gate=False
    )
    record(
        actor=actor,
        action="model.rollback",
        target=restored,
        before={"production": _state(current)},
        after={"production": _state(restored)},
    )
    return restored


# --- the operating point ---------------------------------------------------------------------


class OperatingPointError(RegistryError):
    """The offsets asked for are not a row of the version's operating curve."""


# Offsets are stored as JSON floats on a grid of eighths: equal up to rounding.
_OFFSET_TOLERANCE = 1e-6

ROW_FIGURES = (
    "normal_specificity",
    "abnormal_sensitivity",
    "covid19_sensitivity",
    "covid19_specificity",
    "macro_f1",
)


def _point_state(version: ModelVersion) -> dict[str, Any]:
    """What the audit log records of a version's operating point."""
    return {
        "source": "chosen" if version.operating_point else "card",
        "offsets": version.active_offsets,
    }


def curve_row_for(version: ModelVersion, offsets: Any) -> dict[str, Any]:
    """The row of ``version``'s operating curve whose offsets are ``offsets`` (every
    class of the card, each equal up to rounding), or :class:`OperatingPointError`
    saying why not. A version without a curve has nothing to choose from (RegistryError)."""
    curve = version.operating_curve if version.is_classifier else None
    if curve is None:
        raise RegistryError(
            f"#{version.pk} {version.name} has no operating curve on its model card: "
            "its operating point cannot be changed."
        )
    if not isinstance(offsets, dict) or not offsets:
        raise OperatingPointError("Give the offsets as an object: class -> offset.")
    classes = version.classes
    if set(offsets) != set(classes):
        raise OperatingPointError(
            f"Give one offset for each class ({', '.join(classes)}), got "
            f"{', '.join(sorted(map(str, offsets))) or 'none'}."
        )
    try:
        given = {c: float(offsets[c]) for c in classes}
    except (TypeError, ValueError):
        raise OperatingPointError("Every offset must be a number.") from None
    for row in curve["rows"]:
        theirs = row.get("offsets") or {}
        if all(
            c in theirs and abs(float(theirs[c]) - given[c]) <= _OFFSET_TOLERANCE for c in classes
        ):
            return row
    raise OperatingPointError(
        "These offsets are not one of the points measured on validation "
        f"({len(curve['rows'])} rows on the version's operating curve); choose one of them."
    )


@transaction.atomic
def set_operating_point(
    *,
    version: ModelVersion,
    actor=None,
    offsets: dict[str, float] | None = None,
    reset: bool = False,
    reason: str = "",
) -> ModelVersion:
    """Serve ``version`` at another row of its card's operating curve (``offsets``), or at
    the card's own point again (``reset``); audited ``model.operating_point``.

    Only rows measured on validation may be chosen (:func:`curve_row_for`): a point
    nobody measured is refused and nothing is written. Choosing the card's own row is
    a reset. Workers apply the change from their next task (``apps.models.serving``).
    """
    if reset == (offsets is not None):
        raise OperatingPointError("Give either the offsets of a curve row or reset, not both.")
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    before = _point_state(version)
    row = None
    if offsets is not None:
        row = curve_row_for(version, offsets)
        if row.get("chosen"):
            row = None  # the card's own point: stored as "no choice"
    elif not version.is_classifier or version.card_point is None:
        raise RegistryError(f"#{version.pk} {version.name} has no operating point to reset to.")
    version.operating_point = (
        None
        if row is None
        else {
            "offsets": {c: float(row["offsets"][c]) for c in version.classes},
            **{k: row[k] for k in ROW_FIGURES if k in row},
        }
    )
    version.save(update_fields=["operating_point"])
    after = _point_state(version)
    record(
        actor=actor,
        action="model.operating_point",
        target=version,
        before={"operating_point": before},
        after={"operating_point": after, "figures": version.operating_point, "reason": reason},
    )
    log.info("model version %s now serves at %s (%s)", version, after, reason or "manual")
    return version


def card_task(card: dict) -> str:
    """The task a model card describes: its ``task`` key when it has one (a CT card says
    "ct lesion segmentation", the lung U-Net's "lung segmentation"), else classification
    (every card written before CT)."""
    value = str(card.get("task") or Task.CLASSIFICATION).strip().lower()
    if "lung" in value and "segment" in value and "ct" not in value.split():
        value = Task.LUNG_SEGMENTATION  # "lung segmentation", "lung_segmentation"
    elif "segment" in value:  # "ct lesion segmentation", "ct_segmentation", ...
        value = Task.CT_SEGMENTATION
    elif "classif" in value:
        value = Task.CLASSIFICATION
    if value not in Task.values:
        raise RegistryError(
            f"Model card names task {card.get('task')!r}; expected one of {', '.join(Task.values)}."
        )
    return value


def _checked_card(artifact_path: Path, task: str | None) -> tuple[dict, str, str]:
    """(card, artifact sha256, task) of an artifact, or a RegistryError saying what is
    wrong: no file, no card, a card of another artifact or task, a key the task needs."""
    # Lightweight: hashing lives in ml.models.artifacts, which does not import TensorFlow.
    from ml.models.artifacts import card_path, sha256_file

    if not artifact_path.is_file():
        raise RegistryError(f"Model artifact {artifact_path} does not exist.")
    cpath = card_path(artifact_path)
    if not cpath.is_file():
        raise RegistryError(f"Model card {cpath} is missing; every artifact needs one.")
    card = json.loads(cpath.read_text())
    digest = sha256_file(artifact_path)
    if card.get("sha256") not in (None, digest):
        raise RegistryError(
            f"Model card {cpath.name} records sha256 {card['sha256']}, "
            f"but the artifact's is {digest}."
        )
    recorded_task = card_task(card)
    if task is not None and task != recorded_task and "task" in card:
        raise RegistryError(
            f"Model card {cpath.name} describes a {recorded_task} model, not {task}."
        )
    task = task or recorded_task
    for key in TASKS[task].card_keys:
        if key not in card:
            raise RegistryError(f"Model card {cpath.name} lacks {key!r}.")
    return card, digest, task


def register_artifact(
    *,
    artifact_path: Path,
    name: str | None = None,
    make_production: bool = False,
    task: str | None = None,
) -> ModelVersion:
    """Copy a ``.keras`` artifact and its model card into the registry (idempotent by sha256).

    ``task``: what the model does; by default the card says (:func:`card_task`). A
    ``task`` given that contradicts the card is refused. A segmenter's card (CT, lungs)
    stores its own metrics (Dice and IoU) as the version's metrics.

    The card's recorded sha256 must match the file: a card that describes a
    different artifact is refused rather than registered with wrong metadata.
    When the card names a ``training_animation`` (the Grad-CAM GIF that
    ``ml.models.training`` writes beside the artifact) and that file is there, it is copied
    too; when the card's metrics are those of a ``report/metrics.json`` beside the
    artifact, that fuller result (confusion matrix, per source, curves) is stored
    as the version's metrics, so its plots can be drawn.
    """
    artifact_path = Path(artifact_path)
    card, digest, task = _checked_card(artifact_path, task)
    animation_path = _training_animation_path(artifact_path, card)
    if task == Task.CLASSIFICATION:
        evaluation = _card_evaluation(artifact_path, card)
        metrics = evaluation.to_json() if evaluation is not None else {}
    else:
        metrics = _segmentation_metrics(card)
    # The inference queue's models (classifier, lung segmenter) are converted for its
    # LiteRT runtime now, outside the transaction (seconds: it imports TensorFlow; a
    # bundled model ships its file), unless the version has its file already.
    existing = ModelVersion.objects.filter(sha256=digest).first()
    needs_lite = TASKS[task].lite and (existing is None or not (existing.card or {}).get("lite"))
    with (
        lite_conversion(artifact_path, digest) if needs_lite else nullcontext(None) as lite,
        files_removed_on_error() as stored,
        transaction.atomic(),
    ):
        version = ModelVersion.objects.filter(sha256=digest).first()
        if version is None:
            version = ModelVersion(
                name=name or card.get("name") or artifact_path.stem,
                task=task,
                sha256=digest,
                card=card,
                metrics=metrics,
                status=ModelVersion.Status.CANDIDATE,
            )
            with artifact_path.open("rb") as fh:
                version.artifact.save(artifact_path.name, File(fh), save=False)
            stored.add(version.artifact.name)
            _store_drift_reference(version, artifact_path, digest, stored)
            if lite is not None:
                _store_lite(version, lite, stored)
            if animation_path is not None:
                with animation_path.open("rb") as fh:
                    version.training_animation.save(animation_path.name, File(fh), save=False)
                stored.add(version.training_animation.name)
            version.save()
        elif version.task != task:
            raise RegistryError(
                f"This artifact is registered already as #{version.pk}, a {version.task} model."
            )
        elif lite is not None and not (version.card or {}).get("lite"):
            _store_lite(version, lite, stored)
            version.save(update_fields=["card"])
        if make_production:
            version = promote(version=version, reason="registered as production")
    return version


def _store_drift_reference(
    version: ModelVersion, artifact_path: Path, digest: str, stored: StoredFiles
) -> None:
    """Store the drift monitor's reference (``drift-reference.json`` beside the artifact,
    made by ``python -m ml classifier drift-reference``) beside the stored artifact as
    ``<stem>.drift-reference.json``, where apps.sites.drift looks; only one made from
    this very artifact (its ``model_sha256``)."""
    from ml.models.drift import REFERENCE_NAME

    beside = artifact_path.parent / REFERENCE_NAME
    try:
        made_from = json.loads(beside.read_text()).get("model_sha256") if beside.is_file() else None
    except (OSError, ValueError, AttributeError):
        made_from = None
    if made_from != digest:
        return
    name = PurePosixPath(version.artifact.name or artifact_path.name)
    with beside.open("rb") as fh:
        saved = version.artifact.storage.save(
            str(name.with_name(f"{name.stem}.{REFERENCE_NAME}")), File(fh)
        )
    stored.add(saved)


@contextmanager
def lite_conversion(
    artifact_path: Path, digest: str
) -> Iterator[tuple[Path, dict[str, Any]] | None]:
    """The LiteRT file for a classifier's ``.keras`` artifact, and its record.

    The ``.tflite`` beside the artifact is used when its sidecar says it was converted
    from this very artifact (``digest``) and its own hash matches (no TensorFlow
    needed: the bundled models ship theirs); otherwise the model is converted now,
    into a temporary folder removed when the block ends. None, with a warning, when
    the conversion fails: the version is then served by Keras.
    """
    from ml.models.artifacts import sha256_file
    from ml.serving.runtime import convert_to_lite, lite_path_for, read_lite_record

    beside = lite_path_for(artifact_path)
    if beside.is_file():
        try:
            record = read_lite_record(beside)
        except (OSError, ValueError):
            record = {}
        if record.get("source_sha256") == digest and record.get("sha256") == sha256_file(beside):
            yield beside, record
            return
    with tempfile.TemporaryDirectory(prefix="cxr-lite-") as folder:
        out = Path(folder) / beside.name
        try:
            record = convert_to_lite(artifact_path, out)
        except Exception:
            log.warning(
                "%s could not be converted for LiteRT; the inference queue will serve it "
                "with Keras",
                artifact_path.name,
                exc_info=True,
            )
            converted = None
        else:
            converted = (out, record)
        yield converted


def _store_lite(
    version: ModelVersion, lite: tuple[Path, dict[str, Any]], stored: StoredFiles
) -> None:
    """Store the ``.tflite`` beside the version's artifact; record it in ``card["lite"]``."""
    path, conversion = lite
    if conversion["source_sha256"] != version.sha256:
        raise RegistryError(
            f"{path.name} was converted from another artifact than #{version.pk}'s."
        )
    name = str(PurePosixPath(version.artifact.name or path.name).with_suffix(path.suffix))
    with path.open("rb") as fh:
        saved = version.artifact.storage.save(name, File(fh))
    stored.add(saved)
    version.card = {
        **(version.card or {}),
        "lite": {
            "artifact": saved,
            "sha256": conversion["sha256"],
            "source_sha256": conversion["source_sha256"],
            "converter": conversion.get("converter", ""),
        },
    }


def add_lite(version: ModelVersion, *, force: bool = False) -> bool:
    """Convert a registered model of the inference queue (:data:`TASKS`' ``lite``) for
    LiteRT and store the file (versions registered before conversion at registration;
    ``manage.py lite_convert``). False when there was nothing to do or the conversion
    failed (logged)."""
    from apps.models.serving import local_artifact_path

    if not version.task_spec.lite or ((version.card or {}).get("lite") and not force):
        return False
    with (
        lite_conversion(local_artifact_path(version), version.sha256) as lite,
        files_removed_on_error() as stored,
        transaction.atomic(),
    ):
        if lite is None:
            return False
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        old = (locked.card or {}).get("lite")
        _store_lite(locked, lite, stored)
        locked.save(update_fields=["card"])
        if old and old.get("artifact") != locked.card["lite"]["artifact"]:
            name = old["artifact"]
            transaction.on_commit(lambda: locked.artifact.storage.delete(name))
        version.card = locked.card
    return True


def _segmentation_metrics(card: dict) -> dict:
    """A CT segmenter's figures from its card (whatever it calls them: ``metrics``,
    ``evaluation`` or ``test``); stored as they are, shown by ``ModelVersion.ct_metrics``."""
    for key in ("metrics", "evaluation", "test"):
        value = card.get(key)
        if isinstance(value, dict) and value:
            return value
    return {}


def _training_animation_path(artifact_path: Path, card: dict) -> Path | None:
    """The GIF the card names, if it lies beside the artifact (a bare file name only)."""
    name = card.get("training_animation")
    if not isinstance(name, str) or not name:
        return None
    if Path(name).name != name or not name.lower().endswith(".gif"):
        raise RegistryError(f"Model card names training_animation {name!r}, not a GIF file name.")
    path = artifact_path.parent / name
    if not path.is_file():
        log.warning("model card names %s, but it is not beside the artifact", name)
        return None
    return path


def _card_evaluation(artifact_path: Path, card: dict) -> EvaluationResult | None:
    """The evaluation to store for a card: its own, or the fuller report beside it.

    A card written since the typed contract holds the whole evaluation. An older card
    holds a summary (``test_macro_f1``, ...; no confusion matrix, no curves): then
    ``report/metrics.json`` beside the artifact is used instead, when it is the card's
    own evaluation (same macro-F1, accuracy and ECE), so a report left there by another
    model is never attached to this one.
    """
    try:
        summary = EvaluationResult.from_card(card)
    except MetricsFormatError as exc:
        raise RegistryError(
            f"Model card of {artifact_path.name} has unreadable metrics: {exc}"
        ) from None
    if summary is None or (summary.confusion_matrix is not None and summary.curves is not None):
        return summary
    report = _report_evaluation(artifact_path.parent / "report" / "metrics.json")
    same = report is not None and (report.macro_f1, report.accuracy, report.ece) == (
        summary.macro_f1,
        summary.accuracy,
        summary.ece,
    )
    return report if same else summary


def _report_evaluation(path: Path) -> EvaluationResult | None:
    if not path.is_file():
        return None
    try:
        return EvaluationResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:  # MetricsFormatError is a ValueError
        log.warning("could not read %s (%s); storing the card's metrics", path, exc)
        return None


def active_training_run() -> TrainingRun | None:
    return TrainingRun.objects.filter(
        status__in=[TrainingRun.Status.PENDING, TrainingRun.Status.RUNNING]
    ).first()


@transaction.atomic
def start_training_run(
    *, requested_by=None, trigger: str = TrainingRun.Trigger.MANUAL, config: dict | None = None
) -> TrainingRun:
    """Snapshot the current data and queue a training run (one at a time).

    The run trains the way the production classifier was trained (its card's recipe:
    architecture, preprocessing, measures against shortcuts, operating-point rule, frozen
    backbone blocks), for ``CXR_TRAINING_EPOCHS`` epochs, with ``config`` on top; a
    candidate trained another way would be compared with production on unequal terms
    and refused by the gate for it."""
    from apps.models.datasets import create_snapshot
    from ml.models.recipe import recipe_from_card

    # Two requests at once must not both pass the check below and create two runs (and,
    # on a fresh database, two root snapshots with different test splits).
    serialize("registry.start_training_run")
    active = active_training_run()
    if active is not None:
        raise RegistryError(f"Training run {active.pk} is still {active.status}; wait for it.")
    snapshot = create_snapshot(created_by=requested_by)
    production = ModelVersion.objects.production()
    run = TrainingRun.objects.create(
        snapshot=snapshot,
        requested_by=requested_by,
        trigger=trigger,
        config={
            **recipe_from_card(production.card if production is not None else None),
            "epochs": settings.CXR_TRAINING_EPOCHS,
            **(config or {}),
        },
    )
    record(
        actor=requested_by,
        action="training.start",
        target=run,
        after={"snapshot": snapshot.pk, "trigger": trigger, "config": run.config},
    )
    enqueue_job(run)
    return run


def retrain_if_enough_labels() -> TrainingRun | None:
    """Celery beat: start a run once enough newly confirmed labels exist."""
    from apps.models.datasets import new_confirmed_labels_since_last_snapshot

    new = new_confirmed_labels_since_last_snapshot()
    if new < settings.CXR_RETRAIN_MIN_NEW_LABELS or active_training_run() is not None:
        log.info("retraining not due: %d new confirmed label(s)", new)
        return None
    return start_training_run(trigger=TrainingRun.Trigger.SCHEDULE)

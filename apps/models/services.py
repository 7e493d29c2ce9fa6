"""Model registry services: register, promote, roll back, train.

Each state change is one transaction and writes an audit event.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import record
from apps.models.models import ModelVersion, TrainingRun
from cxrplatform.files import files_removed_on_error
from cxrplatform.jobs import enqueue_job

log = logging.getLogger(__name__)


class RegistryError(Exception):
    pass


def _state(version: ModelVersion | None) -> dict:
    if version is None:
        return {}
    return {"version": version.pk, "name": version.name, "status": version.status}


@transaction.atomic
def promote(*, version: ModelVersion, actor=None, reason: str = "") -> ModelVersion:
    """Archive the current production version and promote ``version``, in one transaction.

    The partial unique constraint guarantees that a concurrent promotion
    cannot leave two production rows: one of the two transactions fails.
    Workers pick the new model up on their next task (no restart).
    """
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.status == ModelVersion.Status.PRODUCTION:
        return version
    if version.status not in {ModelVersion.Status.CANDIDATE, ModelVersion.Status.ARCHIVED}:
        raise RegistryError(f"A {version.status} model version cannot be promoted.")
    previous = ModelVersion.objects.select_for_update().production()
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


@transaction.atomic
def rollback(*, actor=None) -> ModelVersion:
    """Make the previous production version serve again."""
    current = ModelVersion.objects.production()
    if current is None:
        raise RegistryError("There is no production version to roll back.")
    previous = (
        ModelVersion.objects.filter(status=ModelVersion.Status.ARCHIVED, promoted_at__isnull=False)
        .exclude(pk=current.pk)
        .order_by("-promoted_at")
        .first()
    )
    if previous is None:
        raise RegistryError("No earlier production version to roll back to.")
    restored = promote(version=previous, actor=actor, reason=f"rollback from {current.pk}")
    record(
        actor=actor,
        action="model.rollback",
        target=restored,
        before={"production": _state(current)},
        after={"production": _state(restored)},
    )
    return restored


def register_artifact(
    *, artifact_path: Path, name: str | None = None, make_production: bool = False
) -> ModelVersion:
    """Copy a ``.keras`` artifact and its model card into the registry (idempotent by sha256).

    The card's recorded sha256 must match the file: a card that describes a
    different artifact is refused rather than registered with wrong metadata.
    When the card names a ``training_animation`` (the Grad-CAM GIF that
    ``ml.models.training`` writes beside the artifact) and that file is there, it is copied
    too; when the card's metrics are those of a ``report/metrics.json`` beside the
    artifact, that fuller result (confusion matrix, per source, curves) is stored
    as the version's metrics, so its plots can be drawn.
    """
    # Lightweight: hashing lives in ml.models.artifacts, which does not import TensorFlow.
    from ml.models.artifacts import card_path, sha256_file

    artifact_path = Path(artifact_path)
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
    for key in ("classes", "preprocessing"):
        if key not in card:
            raise RegistryError(f"Model card {cpath.name} lacks {key!r}.")
    animation_path = _training_animation_path(artifact_path, card)
    with files_removed_on_error() as stored, transaction.atomic():
        version = ModelVersion.objects.filter(sha256=digest).first()
        if version is None:
            version = ModelVersion(
                name=name or card.get("name") or artifact_path.stem,
                sha256=digest,
                card=card,
                metrics=_report_metrics(artifact_path, card) or _card_metrics(card),
                status=ModelVersion.Status.CANDIDATE,
            )
            with artifact_path.open("rb") as fh:
                version.artifact.save(artifact_path.name, File(fh), save=False)
            stored.add(version.artifact.name)
            if animation_path is not None:
                with animation_path.open("rb") as fh:
                    version.training_animation.save(animation_path.name, File(fh), save=False)
                stored.add(version.training_animation.name)
            version.save()
        if make_production:
            version = promote(version=version, reason="registered as production")
    return version


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


def _report_metrics(artifact_path: Path, card: dict) -> dict | None:
    """``report/metrics.json`` beside the artifact, when it is the card's own evaluation.

    ``ml.models.training`` writes it next to the card; it holds more than the card's summary
    (confusion matrix, per-source figures, ROC and calibration curves). It is used
    only when its macro-F1, accuracy and ECE are exactly the card's, so a report
    left there by another model is never attached to this one.
    """
    path = artifact_path.parent / "report" / "metrics.json"
    summary = card.get("metrics", {})
    if not path.is_file() or "test_macro_f1" not in summary:
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("could not read %s; storing the card's metrics", path)
        return None
    same = (
        isinstance(metrics, dict)
        and metrics.get("macro_f1") == summary["test_macro_f1"]
        and metrics.get("accuracy") == summary.get("test_accuracy")
        and metrics.get("ece") == summary.get("test_ece")
    )
    return metrics if same else None


def _card_metrics(card: dict) -> dict:
    """The card's test metrics in the ``ml.models.evaluation`` shape (macro_f1, per_class, ...)."""
    metrics = card.get("metrics", {})
    if "test_macro_f1" not in metrics:
        return {}
    return {
        "macro_f1": metrics["test_macro_f1"],
        "macro_f1_ci": metrics.get("test_macro_f1_ci"),
        "accuracy": metrics.get("test_accuracy"),
        "per_class": metrics.get("test_per_class", {}),
        "roc_auc_macro": metrics.get("test_roc_auc_macro"),
        "ece": metrics.get("test_ece"),
        "n": card.get("data", {}).get("split", {}).get("counts", {}).get("test"),
    }


def active_training_run() -> TrainingRun | None:
    return TrainingRun.objects.filter(
        status__in=[TrainingRun.Status.PENDING, TrainingRun.Status.RUNNING]
    ).first()


@transaction.atomic
def start_training_run(
    *, requested_by=None, trigger: str = TrainingRun.Trigger.MANUAL, config: dict | None = None
) -> TrainingRun:
    """Snapshot the current data and queue a training run (one at a time)."""
    from apps.models.datasets import create_snapshot

    active = active_training_run()
    if active is not None:
        raise RegistryError(f"Training run {active.pk} is still {active.status}; wait for it.")
    snapshot = create_snapshot(created_by=requested_by)
    run = TrainingRun.objects.create(
        snapshot=snapshot,
        requested_by=requested_by,
        trigger=trigger,
        config={"epochs": settings.CXR_TRAINING_EPOCHS, **(config or {})},
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

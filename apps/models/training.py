"""Run one training job (worker code: imports ml and TensorFlow lazily)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from django.db import transaction

from apps.accounts.models import record
from apps.models import notifications, services
from apps.models.models import ModelVersion, SnapshotItem, TrainingRun
from apps.models.serving import local_file_path
from cxrplatform.jobs import claim_job, failure_recorded

log = logging.getLogger(__name__)


def _records(items, workdir: Path):
    from ml.data.loaders import Record

    records, splits = [], []
    for item in items:
        image = item.reference_image or item.case_image
        if image is None:  # withdrawn (an erased clinical image): nothing to train on
            continue
        records.append(
            Record(
                path=local_file_path(image.file, workdir),
                label=item.label,
                patient=item.patient,
                source=item.source,
            )
        )
        splits.append(item.split)
    return records, splits


def run_training(*, run_id: int) -> TrainingRun | None:
    run = claim_job(TrainingRun, run_id)
    if run is None or run.is_finished:
        return run

    last_write = 0.0

    def hook(progress: dict) -> None:
        nonlocal last_write
        now = time.monotonic()
        end_of_epoch = "logs" in progress
        if end_of_epoch or now - last_write > 2.0:
            last_write = now
            TrainingRun.objects.filter(pk=run_id).update(progress=progress)
            if end_of_epoch:
                line = f"epoch {progress['epoch']}/{progress['epochs']}: {progress['logs']}\n"
                run.log += line
                TrainingRun.objects.filter(pk=run_id).update(log=run.log)

    with failure_recorded(run, what="Training"):
        from ml.data.loaders import Dataset
        from ml.models.training import TrainConfig, train

        items = list(
            SnapshotItem.objects.filter(snapshot=run.snapshot)
            .select_related("reference_image", "case_image")
            .order_by("pk")
        )
        with tempfile.TemporaryDirectory(prefix=f"cxr-run-{run.pk}-") as tmp:
            workdir = Path(tmp)
            records, splits = _records(items, workdir / "images")
            config = TrainConfig(**run.config)
            result = train(
                Dataset(records=records, sources=sorted({r.source for r in records})),
                workdir / "out",
                config,
                progress=False,
                hook=hook,
                name=f"cxr-run-{run.pk}",
                splits=splits,
            )
            test_records = [r for r, s in zip(records, splits, strict=True) if s == "test"]
            parent = ModelVersion.objects.production()
            production_metrics, paired = None, None
            if parent is not None:
                production_metrics, paired = _measure_production(
                    parent, test_records, result, n_bootstrap=config.n_bootstrap
                )
            version = services.register_artifact(artifact_path=result.artifact)
        comparison = {
            "test_images": len(test_records),
            "candidate": result.metrics.to_json(),
            "production": production_metrics.to_json() if production_metrics else None,
            "production_version": parent.pk if parent else None,
            "paired": paired.to_json() if paired is not None else None,
        }
        refusals = services.auto_promotion_refusals(comparison, parent)
        comparison["gate"] = {
            "passed": not refusals,
            "reasons": refusals,
            "summary": services.gate_summary(comparison, refusals),
        }
        with transaction.atomic():
            ModelVersion.objects.filter(pk=version.pk).update(
                metrics=comparison["candidate"], snapshot=run.snapshot, parent=parent
            )
            training = result.card.get("training") or {}
            run.mark_done(
                model_version=version,
                comparison=comparison,
                progress={
                    **(TrainingRun.objects.get(pk=run.pk).progress or {}),
                    "epochs": config.epochs,
                    "epochs_run": training.get("epochs_run"),
                    "best_epoch": training.get("best_epoch"),
                },
            )
            record(
                actor=run.requested_by,
                action="training.done",
                target=run,
                after={
                    "model_version": version.pk,
                    "macro_f1": result.metrics.macro_f1,
                    "gate": comparison["gate"],
                },
            )
        version.refresh_from_db()
        _promote_automatically(version, refusals)
    if run.status == TrainingRun.Status.DONE:
        # Model admins learn the outcome: candidate ready, the gate's verdict, promoted.
        # (A failure tells them through TrainingRun.mark_failed, whatever path failed it.)
        run.refresh_from_db()
        notifications.training_ended(run)
    return run


def _measure_production(
    parent: ModelVersion, test_records: list, result, *, n_bootstrap: int
) -> tuple:
    """Production's metrics on the run's test images, and the paired comparison of its
    calls (at the operating point it serves) with the candidate's on those images."""
    import numpy as np
    from django.conf import settings

    from apps.models.serving import classifier_for
    from ml.data.labels import CLASSES
    from ml.models.paired import paired_bootstrap
    from ml.models.training import evaluate_records
    from ml.serving.classifier import shift_probabilities

    classifier = classifier_for(parent)
    metrics, probs = evaluate_records(classifier, test_records, n_bootstrap=n_bootstrap)
    if result.probabilities is None or not test_records:
        return metrics, None
    offsets = np.array([float((classifier.offsets or {}).get(c, 0.0)) for c in CLASSES])
    served = shift_probabilities(probs, offsets) if offsets.any() else probs
    paired = paired_bootstrap(
        [r.label for r in test_records],
        [CLASSES[i] for i in np.argmax(served, axis=1)],
        [CLASSES[i] for i in np.argmax(result.probabilities, axis=1)],
        CLASSES,
        patients=[r.patient for r in test_records],
        min_images=settings.CXR_COMPARE_MIN_IMAGES,
    )
    return metrics, paired


def _promote_automatically(version: ModelVersion, refusals: list[str]) -> None:
    from django.conf import settings

    if not settings.CXR_AUTO_PROMOTE:
        return
    if refusals:
        log.info("candidate %s not promoted automatically: %s", version, " ".join(refusals))
        return
    try:
        services.promote(version=version, actor=None, reason="automatic: gate passed")
    except services.RegistryError as exc:  # production changed while the run trained
        log.warning("automatic promotion of %s refused: %s", version, exc)
    version.refresh_from_db()

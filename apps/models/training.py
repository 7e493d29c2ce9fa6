"""Run one training job (worker code: imports ml and TensorFlow lazily)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from apps.accounts.models import record
from apps.models import notifications, services
from apps.models.models import ModelVersion, SnapshotItem, TrainingRun
from apps.models.serving import local_file_path
from cxrplatform.jobs import JobResult, JobRunner

log = logging.getLogger(__name__)


def _records(items, workdir: Path):
    from apps.models.datasets import item_image
    from ml.data.loaders import Record

    records, splits = [], []
    for item in items:
        image = item_image(item)
        if image is None:  # withdrawn, or its case deleted: nothing to train on
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


class TrainingRunner(JobRunner[TrainingRun]):
    """Train a candidate on the run's snapshot, register it, compare it with production
    on the run's test images and judge it by the promotion gate; model admins are told
    the outcome, and a candidate the gate passes is promoted when CXR_AUTO_PROMOTE is on.
    (A failure tells them through TrainingRun.mark_failed, whatever path failed it.)"""

    what = "Training"
    version: ModelVersion  # the candidate
    parent: ModelVersion | None  # production when the run ended
    refusals: list[str]  # the gate's reasons not to promote it
    macro_f1: float

    def compute(self, run: TrainingRun) -> JobResult:
        from ml.data.loaders import Dataset
        from ml.models.training import TrainConfig, train

        items = list(
            SnapshotItem.objects.filter(snapshot=run.snapshot)
            .select_related("reference_image", "case_image__case")
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
                hook=_progress_hook(run),
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
            _write_drift_reference(result, test_records)
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
        self.version, self.refusals, self.parent = version, refusals, parent
        self.macro_f1 = result.metrics.macro_f1
        training = result.card.get("training") or {}
        return JobResult(
            fields={
                "model_version": version,
                "comparison": comparison,
                "progress": {
                    **(TrainingRun.objects.get(pk=run.pk).progress or {}),
                    "epochs": config.epochs,
                    "epochs_run": training.get("epochs_run"),
                    "best_epoch": training.get("best_epoch"),
                },
            }
        )

    def on_done(self, run: TrainingRun) -> None:
        ModelVersion.objects.filter(pk=self.version.pk).update(
            metrics=run.comparison["candidate"], snapshot=run.snapshot, parent=self.parent
        )
        record(
            actor=run.requested_by,
            action="training.done",
            target=run,
            after={
                "model_version": self.version.pk,
                "macro_f1": self.macro_f1,
                "gate": run.comparison["gate"],
            },
        )

    def after_done(self, run: TrainingRun) -> None:
        self.version.refresh_from_db()
        _promote_automatically(self.version, self.refusals)
        # Model admins learn the outcome: candidate ready, the gate's verdict, promoted.
        run.refresh_from_db()
        notifications.training_ended(run)


def _progress_hook(run: TrainingRun):
    """What the fit loop calls with its progress: written on the row at most every 2 s and
    at each epoch's end, which also appends the epoch's line to the run's log."""
    last_write = 0.0

    def hook(progress: dict) -> None:
        nonlocal last_write
        now = time.monotonic()
        end_of_epoch = "logs" in progress
        if end_of_epoch or now - last_write > 2.0:
            last_write = now
            TrainingRun.objects.filter(pk=run.pk).update(progress=progress)
            if end_of_epoch:
                line = f"epoch {progress['epoch']}/{progress['epochs']}: {progress['logs']}\n"
                run.log += line
                TrainingRun.objects.filter(pk=run.pk).update(log=run.log)

    return hook


def _write_drift_reference(result, test_records: list) -> None:
    """The candidate's drift reference on its test split, beside its artifact (stored
    with it when it is registered), so the site drift monitor can watch it once it
    serves. A failure here is logged and never fails the run: the version then shows
    "no reference" on the drift page."""
    from apps.cases.validation import ood_gate
    from ml.models.drift import REFERENCE_NAME
    from ml.models.drift_reference import write_reference
    from ml.serving.classifier import Classifier

    try:
        classifier = Classifier.load(
            result.artifact, expected_sha256=result.card.get("sha256"), card=result.card
        )
        write_reference(
            classifier, test_records, result.artifact.parent / REFERENCE_NAME, gate=ood_gate()
        )
    except Exception:
        log.exception("the candidate's drift reference could not be made")


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

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import models
from django.db.models import Q

from cxrplatform.jobs import Job, JobKind
from ml.data.labels import CLASS_CHOICES
from ml.models.metrics import EvaluationResult, MetricsFormatError

log = logging.getLogger(__name__)

LABEL_CHOICES = CLASS_CHOICES


class ModelVersionQuerySet(models.QuerySet["ModelVersion"]):
    def production(self) -> ModelVersion | None:
        """The version that serves predictions, or None before a model admin promotes one.

        The one place that says which model is in production: the worker's
        warm-up, inference, training's comparison and the pages all ask here.
        A partial unique constraint allows at most one such row.
        """
        return self.filter(status=ModelVersion.Status.PRODUCTION).first()


class ModelVersion(models.Model):
    """One trained model artifact and where it stands in the serving lifecycle.

    ``metrics`` are computed by ``ml.models.evaluation`` on the fixed test split of
    ``snapshot`` (the bundled model's on its own held-out split), so versions
    trained on snapshots of one lineage are comparable.
    """

    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        CANDIDATE = "candidate", "Candidate"
        PRODUCTION = "production", "Production"
        ARCHIVED = "archived", "Archived"
        FAILED = "failed", "Failed"

    name = models.CharField(max_length=200)
    artifact = models.FileField(upload_to="models/%Y/%m/", max_length=300)
    training_animation = models.FileField(
        upload_to="models/%Y/%m/",
        max_length=300,
        blank=True,
        null=True,
        help_text="Grad-CAM of fixed validation images after every training epoch (GIF).",
    )
    sha256 = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.CANDIDATE)
    card = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    snapshot = models.ForeignKey(
        "registry.DatasetSnapshot",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="model_versions",
    )
    parent = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="children",
        help_text="The production version when this one was trained.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=["status"],
                condition=Q(status="production"),
                name="registry_one_production_version",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.sha256[:12]}, {self.status})"

    @property
    def classes(self) -> list[str]:
        return list(self.card.get("classes", []))

    @property
    def evaluation(self) -> EvaluationResult | None:
        """``metrics`` read as the typed evaluation (None when none was recorded).

        Rows that cannot be read (hand-edited, or a format this code does not know) are
        logged and treated as unmeasured, so a page still renders.
        """
        try:
            return EvaluationResult.from_json_or_none(self.metrics)
        except MetricsFormatError as exc:
            log.warning("model version %s: unreadable metrics (%s)", self.pk, exc)
            return None


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    VAL = "val", "Validation"
    TEST = "test", "Test"


def _reference_upload_to(instance: ReferenceImage, filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return f"reference/{instance.source}/{instance.sha256[:2]}/{instance.sha256}{suffix}"


class ReferenceImage(models.Model):
    """A labelled image from a seed data set (not a clinician's case)."""

    file = models.FileField(upload_to=_reference_upload_to, max_length=300)
    sha256 = models.CharField(max_length=64, unique=True)
    label = models.CharField(max_length=20, choices=LABEL_CHOICES)
    patient = models.CharField(max_length=100, db_index=True)
    source = models.CharField(max_length=100, db_index=True)
    original_name = models.CharField(max_length=300)
    imported_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("source", "original_name")

    def __str__(self) -> str:
        return f"{self.source}/{self.original_name} ({self.label})"


class DatasetSnapshot(models.Model):
    """A frozen training set: which images, which labels, which split.

    Items are never edited after creation; ``content_hash`` names the
    membership. The test split is inherited unchanged from the first snapshot
    so every model version is measured on the same images.
    """

    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    parent = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="children"
    )
    content_hash = models.CharField(max_length=64)
    counts = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("-created_at", "-pk")

    def __str__(self) -> str:
        return f"Snapshot {self.pk} ({self.content_hash[:12]})"


class SnapshotItem(models.Model):
    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.CASCADE, related_name="items")
    reference_image = models.ForeignKey(
        ReferenceImage, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    case_image = models.ForeignKey(
        "cases.CaseImage", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    label = models.CharField(max_length=20, choices=LABEL_CHOICES)
    split = models.CharField(max_length=10, choices=Split)
    patient = models.CharField(max_length=100)
    source = models.CharField(max_length=100)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(reference_image__isnull=False, case_image__isnull=True)
                | Q(reference_image__isnull=True, case_image__isnull=False),
                name="registry_item_has_exactly_one_image",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key} {self.label} ({self.split})"

    @property
    def key(self) -> str:
        if self.reference_image_id:
            return f"ref-{self.reference_image_id}"
        return f"case-{self.case_image_id}"


class TrainingRun(Job):
    """Training a candidate on a snapshot; progress is written while it runs."""

    job_kind = JobKind(task="apps.models.tasks.train_model", queue="training", pk_kwarg="run_id")

    class Trigger(models.TextChoices):
        MANUAL = "manual", "Started by a model admin"
        SCHEDULE = "schedule", "Started by the schedule"

    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.PROTECT, related_name="runs")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    trigger = models.CharField(max_length=20, choices=Trigger.choices, default=Trigger.MANUAL)
    config = models.JSONField(default=dict, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    log = models.TextField(blank=True)
    model_version = models.OneToOneField(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="training_run"
    )
    comparison = models.JSONField(
        default=dict,
        blank=True,
        help_text="Candidate and production metrics on this snapshot's test split.",
    )

    class Meta:
        ordering = ("-created_at", "-pk")

    def __str__(self) -> str:
        return f"Training run {self.pk} ({self.status})"

    @property
    def percent(self) -> int:
        p = self.progress or {}
        epochs, batches = p.get("epochs") or 0, p.get("batches") or 0
        if not epochs or not batches:
            return 100 if self.status == "done" else 0
        done = (p.get("epoch", 1) - 1) * batches + p.get("batch", 0)
        return min(100, int(100 * done / (epochs * batches)))

    def mark_done(self, *, model_version: ModelVersion, comparison: dict) -> None:
        self._mark_done(model_version=model_version, comparison=comparison)

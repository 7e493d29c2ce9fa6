from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q

from cxrplatform.jobs import Job, JobKind
from ml.data.labels import CLASS_CHOICES
from ml.models.metrics import EvaluationResult, MetricsFormatError
from ml.models.paired import PairedComparison

log = logging.getLogger(__name__)

LABEL_CHOICES = CLASS_CHOICES


class Task(models.TextChoices):
    """What a model version does; each task has its own production version (what each
    one is, loads as and says on the pages: :data:`TASKS`)."""

    CLASSIFICATION = "classification", "Chest X-ray classification"
    CT_SEGMENTATION = "ct_segmentation", "CT lesion segmentation"
    LUNG_SEGMENTATION = "lung_segmentation", "Chest X-ray lung segmentation"


@dataclass(frozen=True)
class TaskSpec:
    """One registry task: the model a worker serves for it and the words the registry's
    commands and pages use for it. A new served model is a :class:`Task` and a row of
    :data:`TASKS`; promotion, rollback and audit are the same for every task."""

    served: str  # the ml class a worker loads (an ml.serving.protocol.ServedModel)
    noun: str  # "classifier", "CT segmenter", ...
    serves: str  # what a promoted version serves from then on ("all new <serves>")
    does: str  # what the production version does, for its page ("This version <does>.")
    bundled_setting: str  # the setting naming the artifact `register_model --bundled` takes
    card_keys: tuple[str, ...]  # what the model card must hold
    lite: bool = False  # converted for the LiteRT runtime at registration
    anchor: str = ""  # the id of its section on the registry page
    versions_noun: str = ""  # the registry page: "No <versions_noun> versions yet."
    does_again: str = ""  # a rollback's confirmation: "#pk name <does_again>"
    serving: str = ""  # the registry page: "<serving>: #pk name" for the production version
    idle: str = ""  # the registry page, when no version of the task serves
    make_hint: str = ""  # how to make the bundled artifact when it is missing
    waits: str = ""  # what happens without a production version


TASKS: dict[str, TaskSpec] = {
    Task.CLASSIFICATION: TaskSpec(
        served="ml.serving.classifier.Classifier",
        noun="classifier",
        serves="predictions",
        does="classifies every new chest X-ray",
        bundled_setting="CXR_BUNDLED_MODEL",
        card_keys=("classes", "preprocessing"),
        lite=True,
        waits="Images will wait for a production model.",
    ),
    Task.CT_SEGMENTATION: TaskSpec(
        served="ml.ct.segmenter.CTSegmenter",
        noun="CT segmenter",
        serves="CT segmentations",
        does="segments every new CT slice",
        bundled_setting="CXR_BUNDLED_CT_MODEL",
        card_keys=("preprocessing",),
        anchor="ct-versions",
        versions_noun="CT segmentation",
        does_again="segments CT slices again",
        serving="Serving CT slices",
        idle="No CT segmenter serves yet: CT slices wait",
        make_hint=" (python -m ml ct train makes it)",
        waits="CT slices will wait for a production model.",
    ),
    Task.LUNG_SEGMENTATION: TaskSpec(
        served="ml.lungs.segmenter.LungSegmenter",
        noun="lung segmenter",
        serves="lung masks",
        does="computes the lung masks of every new prediction",
        bundled_setting="CXR_LUNG_MODEL",
        card_keys=("preprocessing",),
        lite=True,
        anchor="lung-versions",
        versions_noun="lung segmentation",
        does_again="computes the lung masks again",
        serving="Computing lung masks",
        idle="No lung segmenter is registered: lung masks come from CXR_LUNG_MODEL's file",
        make_hint=" (python -m ml lungs train makes it)",
        waits="Lung masks come from CXR_LUNG_MODEL's file.",
    ),
}


class ModelVersionQuerySet(models.QuerySet["ModelVersion"]):
    def production(self, task: str = Task.CLASSIFICATION) -> ModelVersion | None:
        """The version that serves ``task``, or None before a model admin promotes one.

        The one place that says which model is in production: the worker's
        warm-up, inference, segmentation, training's comparison and the pages all
        ask here. A partial unique constraint allows at most one such row per task.
        """
        return self.filter(status=ModelVersion.Status.PRODUCTION, task=task).first()

    def of_task(self, task: str) -> ModelVersionQuerySet:
        return self.filter(task=task)


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
    task = models.CharField(
        max_length=30,
        choices=Task.choices,
        default=Task.CLASSIFICATION,
        help_text="What the model does; promotion and rollback act within one task.",
    )
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
    operating_point = models.JSONField(
        null=True,
        blank=True,
        help_text="The row of the card's operating curve a model admin chose instead of the "
        "card's point ({offsets, figures}); null: the card's point, which the artifact "
        "carries. Set only through apps.models.services.set_operating_point (audited).",
    )

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=["task"],
                condition=Q(status="production"),
                name="registry_one_production_version_per_task",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.sha256[:12]}, {self.status})"

    @property
    def classes(self) -> list[str]:
        return list(self.card.get("classes", []))

    @property
    def is_classifier(self) -> bool:
        return self.task == Task.CLASSIFICATION

    @property
    def task_spec(self) -> TaskSpec:
        """What its task is (:data:`TASKS`)."""
        return TASKS[self.task]

    @property
    def card_point(self) -> dict | None:
        """The operating point the card chose on validation (and the artifact's softmax
        bias carries), or None: an older card, or a model served at its argmax."""
        point = (self.card or {}).get("operating_point")
        return point if isinstance(point, dict) and isinstance(point.get("offsets"), dict) else None

    @property
    def operating_curve(self) -> dict | None:
        """The card point's curve (``rows`` a model admin may choose from, ``roc``), or
        None when the card recorded none."""
        point = self.card_point
        curve = point.get("curve") if point else None
        if isinstance(curve, dict) and isinstance(curve.get("rows"), list) and curve["rows"]:
            return curve
        return None

    @property
    def active_offsets(self) -> dict[str, float] | None:
        """The offsets this version serves at: the chosen row's, else the card's."""
        point = self.operating_point or self.card_point
        if not point:
            return None
        return {str(k): float(v) for k, v in point["offsets"].items()}

    @property
    def evaluation(self) -> EvaluationResult | None:
        """``metrics`` read as the typed evaluation (None when none was recorded).

        Rows that cannot be read (hand-edited, or a format this code does not know) are
        logged and treated as unmeasured, so a page still renders. A CT segmenter's
        metrics are another shape (Dice and IoU per class, ``ct_metrics``): None here.
        """
        if not self.is_classifier:
            return None
        try:
            return EvaluationResult.from_json_or_none(self.metrics)
        except MetricsFormatError as exc:
            log.warning("model version %s: unreadable metrics (%s)", self.pk, exc)
            return None

    @property
    def ct_metrics(self) -> list[dict[str, object]]:
        """A CT segmenter's figures as rows for the registry pages (empty for a classifier):
        every numeric figure of its stored metrics, by its dotted key, with an interval
        where one is recorded beside it (``<key>_ci`` or ``ci``)."""
        if self.is_classifier:
            return []
        return _metric_rows(self.metrics)

    @property
    def ct_headline(self) -> list[dict[str, object]]:
        """A CT segmenter's headline figures: its Dice rows (every figure when none is
        named Dice), for the registry's table."""
        rows = self.ct_metrics
        dice = [row for row in rows if "dice" in str(row["key"]).lower()]
        return (dice or rows)[:8]


def _metric_rows(metrics: object, prefix: str = "") -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    if not isinstance(metrics, dict):
        return rows
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            ci = metrics.get(f"{key}_ci") or metrics.get(f"{key}_95ci")
            rows.append({"key": name, "value": value, "ci": ci if isinstance(ci, list) else None})
        elif isinstance(value, dict):
            rows += _metric_rows(value, f"{name}.")
    return rows[:200]


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
    pixel_sha256 = models.CharField(
        max_length=64,
        blank=True,
        db_index=True,
        help_text="SHA-256 of the decoded pixels (apps.models.fingerprint): the same picture "
        "re-encoded, as every clinical upload is, has the same one.",
    )
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
    changes = models.JSONField(
        default=dict,
        blank=True,
        help_text="What changed since the parent snapshot: added, removed (with why), "
        "relabelled, moved between splits, duplicates left out.",
    )

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
    pixel_sha256 = models.CharField(
        max_length=64, blank=True, help_text="The image's pixel hash: one item per picture."
    )
    provenance = models.JSONField(
        default=dict,
        blank=True,
        help_text="Where the label came from when the snapshot was made (the verdicts and "
        "adjudication of a clinical image; the data set of a reference image).",
    )
    withdrawn_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The clinical image was erased (its case deleted and purged, or an erasure "
        "request): the row stays as a record, without the image; later snapshots leave it "
        "out (apps.cases.retention).",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(reference_image__isnull=False, case_image__isnull=True)
                | Q(reference_image__isnull=True, case_image__isnull=False)
                | Q(
                    reference_image__isnull=True,
                    case_image__isnull=True,
                    withdrawn_at__isnull=False,
                ),
                name="registry_item_has_exactly_one_image",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key} {self.label} ({self.split})"

    @property
    def key(self) -> str:
        if self.reference_image_id:
            return f"ref-{self.reference_image_id}"
        if self.case_image_id is None:
            return f"withdrawn-{self.pk}"
        return f"case-{self.case_image_id}"

    @property
    def is_withdrawn(self) -> bool:
        return self.reference_image_id is None and self.case_image_id is None


class TrainingRun(Job):
    """Training a candidate on a snapshot; progress is written while it runs."""

    job_kind = JobKind(
        runner="apps.models.training.TrainingRunner", queue="training", max_retries=1
    )

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
        """How far the run is; a finished run is 100 % even when it stopped early."""
        if self.status == "done":
            return 100
        p = self.progress or {}
        epochs, batches = p.get("epochs") or 0, p.get("batches") or 0
        if not epochs or not batches:
            return 0
        done = (p.get("epoch", 1) - 1) * batches + p.get("batch", 0)
        return min(100, int(100 * done / (epochs * batches)))

    @property
    def progress_text(self) -> str:
        """The run's progress in words: "epoch 3/60, batch 5/12" while it trains,
        "stopped early at epoch 12 of 60 (best 7)" or "ran all 60 epochs (best 58)" once
        done."""
        p = self.progress or {}
        if self.status == "done" and p.get("epochs_run"):
            best = f" (best {p['best_epoch']})" if p.get("best_epoch") else ""
            if p["epochs_run"] < (p.get("epochs") or 0):
                return f"stopped early at epoch {p['epochs_run']} of {p['epochs']}{best}"
            return f"ran all {p['epochs_run']} epochs{best}"
        if p.get("epoch") and not self.is_finished:
            return (
                f"epoch {p['epoch']}/{p.get('epochs', '?')}, "
                f"batch {p.get('batch', 0)}/{p.get('batches', '?')}"
            )
        return ""

    @property
    def paired(self) -> PairedComparison | None:
        """The candidate and production on the same test images (ml.models.paired), or
        None (no production then, or a run from before paired measurement)."""
        return PairedComparison.from_json_or_none((self.comparison or {}).get("paired"))

    def mark_failed(self, error: str) -> None:
        """Failed, by any path (the task's own error, a time limit, the sweeper): model
        admins are told (apps.models.notifications)."""
        super().mark_failed(error)
        from apps.models.notifications import training_ended

        try:
            with transaction.atomic():  # a savepoint: the failure itself stays recorded
                training_ended(self)
        except Exception:
            log.exception("training run %s failed, but model admins could not be told", self.pk)


class Notification(models.Model):
    """A message to one model admin: a training run ended (its candidate is ready, with
    the promotion gate's result and whether it was promoted automatically, or the run
    failed), or a site's images drift from the production model's reference (``run``
    null, ``link`` the site's drift page). Shown on the registry page (unread ones
    counted in a badge) and e-mailed when the recipient has an address
    (apps.models.notifications)."""

    class Kind(models.TextChoices):
        CANDIDATE_READY = "candidate_ready", "Candidate ready, gate passed"
        GATE_REFUSED = "gate_refused", "Candidate ready, gate refused"
        PROMOTED = "promoted", "Candidate promoted automatically"
        FAILED = "failed", "Training failed"
        SITE_DRIFT = "site_drift", "A site's images drift"

    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="registry_notifications"
    )
    run = models.ForeignKey(
        TrainingRun,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
    )
    link = models.CharField(
        max_length=300, blank=True, help_text="The page it is about, when not a training run."
    )
    kind = models.CharField(max_length=30, choices=Kind.choices)
    subject = models.CharField(max_length=200)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)
    emailed_at = models.DateTimeField(null=True, blank=True)
    email_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ("-created_at", "-pk")
        constraints = [
            # A redelivered task or a second failure path tells each admin once.
            models.UniqueConstraint(
                fields=["recipient", "run", "kind"], name="registry_one_notification_per_run"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subject} (to {self.recipient_id})"

    @property
    def is_unread(self) -> bool:
        return self.read_at is None

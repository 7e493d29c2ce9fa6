from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models, transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone

from cxrplatform.jobs import Job, JobKind
from ml.data.labels import CLASS_CHOICES

LABEL_CHOICES = CLASS_CHOICES
UNUSABLE = "unusable"
VERDICT_CHOICES = [*LABEL_CHOICES, (UNUSABLE, "Unusable image")]


def _image_upload_to(instance: CaseImage, filename: str) -> str:
    # Random names: the original file name may carry patient identifiers.
    # A DICOM upload's `file` is its PNG rendition; the DICOM itself is `original`.
    ext = {"png": "png", "jpeg": "jpg", "dicom": "png"}.get(instance.source_format, "bin")
    return f"cases/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.{ext}"


def _original_upload_to(instance: CaseImage, filename: str) -> str:
    return f"cases/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.dcm"


def _lung_upload_to(instance: Prediction, filename: str) -> str:
    # The lung mask and outline PNGs of a prediction's image.
    return f"lungs/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.png"


class CaseQuerySet(models.QuerySet["Case"]):
    def with_status(self) -> CaseQuerySet:
        """Annotate ``derived_status``, the same rule as ``Case.status``, for filtering in SQL."""
        predictions = Prediction.objects.filter(image__case=models.OuterRef("pk"))
        active = [Prediction.Status.PENDING, Prediction.Status.RUNNING]
        return self.annotate(
            derived_status=models.Case(
                models.When(~models.Exists(predictions), then=models.Value("pending")),
                models.When(
                    models.Exists(predictions.filter(status__in=active)),
                    then=models.Value("processing"),
                ),
                models.When(
                    models.Exists(predictions.filter(status=Prediction.Status.FAILED)),
                    then=models.Value("failed"),
                ),
                default=models.Value("done"),
                output_field=models.CharField(),
            )
        )


class Case(models.Model):
    """One clinical submission: one or more images of the same patient."""

    STATUS_CHOICES = [
        ("pending", "Waiting"),
        ("processing", "Processing"),
        ("done", "Done"),
        ("failed", "Failed"),
    ]

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="cases"
    )
    patient_ref = models.CharField(
        max_length=64,
        blank=True,
        help_text="Pseudonymous patient reference (never a name or a hospital ID).",
    )
    notes = models.TextField(blank=True, max_length=5000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CaseQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"Case {self.pk}"

    @property
    def status(self) -> str:
        """Derived from the predictions, so it can never disagree with them."""
        statuses = {p.status for image in self.images.all() for p in image.predictions.all()}
        if not statuses:
            return Prediction.Status.PENDING
        for status in (Prediction.Status.RUNNING, Prediction.Status.PENDING):
            if status in statuses:
                return "processing"
        if Prediction.Status.FAILED in statuses:
            return Prediction.Status.FAILED
        return Prediction.Status.DONE


class CaseImage(models.Model):
    class SourceFormat(models.TextChoices):
        PNG = "png", "PNG"
        JPEG = "jpeg", "JPEG"
        DICOM = "dicom", "DICOM"

    class Status(models.TextChoices):
        ACCEPTED = "accepted", "Accepted"
        UNUSABLE = "unusable", "Unusable"

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="images")
    # What the viewer, the worker and the labelling tools read: the PNG or JPEG
    # as uploaded, or for a DICOM upload an 8-bit PNG rendition of it.
    file = models.FileField(upload_to=_image_upload_to, max_length=300)
    original = models.FileField(
        upload_to=_original_upload_to,
        max_length=300,
        blank=True,
        help_text="The de-identified DICOM file (DICOM uploads only).",
    )
    sha256 = models.CharField(max_length=64, db_index=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    source_format = models.CharField(max_length=10, choices=SourceFormat.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACCEPTED)
    # Set by apps.cases.labelling when enough annotators agree; the training
    # set only ever takes confirmed labels.
    confirmed_label = models.CharField(max_length=20, choices=VERDICT_CHOICES, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("case", "pk")

    def __str__(self) -> str:
        return f"Image {self.pk} of case {self.case_id}"

    @property
    def current_explanations(self) -> list:
        """The newest explanation per method (Grad-CAM first), from the prefetched set."""
        newest: dict[str, object] = {}
        for explanation in sorted(self.explanations.all(), key=lambda e: e.pk):
            newest[explanation.method] = explanation
        return sorted(newest.values(), key=lambda e: (e.method != "gradcam", e.method))

    @property
    def live_state(self) -> str:
        """Changes whenever anything shown about this image changes (for live pages)."""
        prediction = self.latest_prediction
        parts = [prediction.status if prediction else "none", self.confirmed_label]
        parts += [f"{e.method}:{e.status}" for e in self.current_explanations]
        return "|".join(parts)

    @property
    def in_progress(self) -> bool:
        prediction = self.latest_prediction
        return (prediction is not None and not prediction.is_finished) or any(
            not e.is_finished for e in self.current_explanations
        )

    @property
    def latest_prediction(self) -> Prediction | None:
        predictions = list(self.predictions.all())
        return max(predictions, key=lambda p: p.pk) if predictions else None


class Prediction(Job):
    """A classification job and its result; a state machine (pending→running→done|failed)."""

    job_kind = JobKind(
        task="apps.cases.tasks.classify_image", queue="inference", pk_kwarg="prediction_id"
    )

    image = models.ForeignKey(CaseImage, on_delete=models.CASCADE, related_name="predictions")
    model_version = models.ForeignKey(
        "registry.ModelVersion",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="predictions",
    )
    label = models.CharField(max_length=20, choices=LABEL_CHOICES, blank=True)
    probabilities = models.JSONField(default=dict, blank=True)
    preprocess_ms = models.FloatField(null=True, blank=True)
    inference_ms = models.FloatField(null=True, blank=True)
    # Lung fields of the image (apps.cases.lungs), stored with the prediction. A
    # segmentation error never fails the prediction: lungs_found stays null and
    # lung_message says what went wrong.
    lung_mask = models.FileField(
        upload_to=_lung_upload_to, max_length=300, blank=True, help_text="8-bit PNG, 255 = lung."
    )
    lung_outline = models.FileField(
        upload_to=_lung_upload_to,
        max_length=300,
        blank=True,
        help_text="RGBA PNG, transparent except the lung contour (drawn over the image).",
    )
    lung_bbox = models.JSONField(
        null=True, blank=True, help_text="[top, left, bottom, right] in image pixels, exclusive."
    )
    lung_area_fraction = models.FloatField(null=True, blank=True)
    lungs_found = models.BooleanField(
        null=True, blank=True, help_text="Null when segmentation did not run or failed."
    )
    lung_message = models.TextField(blank=True)
    segmenter_version = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(status="done")
                | (models.Q(model_version__isnull=False) & ~models.Q(label="")),
                name="cases_prediction_done_has_result",
            ),
        ]

    def __str__(self) -> str:
        return f"Prediction {self.pk} ({self.status})"

    @property
    def confidence(self) -> float | None:
        return max(self.probabilities.values()) if self.probabilities else None

    @property
    def probability_rows(self) -> list[tuple[str, str, float]]:
        """(class, display name, probability) in the model's class order, for display."""
        return [
            (name, display, float(self.probabilities.get(name, 0.0)))
            for name, display in LABEL_CHOICES
        ]

    def mark_done(
        self,
        *,
        model_version_id: int,
        label: str,
        probabilities: dict[str, float],
        preprocess_ms: float,
        inference_ms: float,
        lungs: dict[str, object] | None = None,
    ) -> None:
        """``lungs``: the lung fields (``apps.cases.lungs.LungFields.as_fields``)."""
        self._mark_done(
            model_version_id=model_version_id,
            label=label,
            probabilities=probabilities,
            preprocess_ms=preprocess_ms,
            inference_ms=inference_ms,
            **(lungs or {}),
        )

    @property
    def lung_area_percent(self) -> float | None:
        return None if self.lung_area_fraction is None else 100 * self.lung_area_fraction


@receiver(post_delete, sender=Prediction, dispatch_uid="cases.prediction.delete_lung_files")
def _delete_lung_files(sender, instance: Prediction, **kwargs) -> None:
    """A deleted prediction's lung mask and outline go too, once the deletion commits
    (a rolled-back deletion keeps them)."""
    files = [(f.storage, f.name) for f in (instance.lung_mask, instance.lung_outline) if f.name]

    def delete_files() -> None:
        for storage, name in files:
            storage.delete(name)

    if files:
        transaction.on_commit(delete_files)


class ExpertLabel(models.Model):
    """One annotator's verdict on one image: a class, or "unusable"."""

    image = models.ForeignKey(CaseImage, on_delete=models.CASCADE, related_name="expert_labels")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="expert_labels"
    )
    label = models.CharField(max_length=20, choices=VERDICT_CHOICES)
    note = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=["image", "annotator"], name="cases_one_label_per_annotator"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.label} by {self.annotator_id} on image {self.image_id}"

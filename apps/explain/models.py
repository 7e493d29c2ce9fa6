from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from apps.cases.models import ImageJob
from cxrplatform.jobs import Job, JobKind


def _explanation_upload_to(instance: Explanation, filename: str) -> str:
    suffix = filename.rsplit(".", 1)[-1]
    return f"explanations/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.{suffix}"


class Explanation(ImageJob):
    """A heatmap for one image, one method and one model version.

    Stores the raw map (float32 ``.npy`` at the model's input resolution, values
    in [0, 1]) and a rendered overlay PNG with a colour scale, plus the
    faithfulness scores that say how much to trust it.
    """

    job_kind = JobKind(runner="apps.explain.jobs.ExplanationRunner", queue="explain")

    class Method(models.TextChoices):
        GRADCAM = "gradcam", "Grad-CAM"
        OCCLUSION = "occlusion", "Occlusion sensitivity"
        SMOOTHGRAD = "smoothgrad", "SmoothGrad"
        INTEGRATED_GRADIENTS = "ig", "Integrated gradients"
        GUIDED_BACKPROP = "guided", "Guided backpropagation"
        DECONVNET = "deconvnet", "Deconvolution"

    image = models.ForeignKey(
        "cases.CaseImage", on_delete=models.CASCADE, related_name="explanations"
    )
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, related_name="explanations"
    )
    method = models.CharField(max_length=30, choices=Method.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Empty for the Grad-CAM made automatically after each prediction.",
    )
    params = models.JSONField(default=dict, blank=True)
    target_class = models.PositiveSmallIntegerField(null=True, blank=True)
    target_label = models.CharField(max_length=20, blank=True)
    layer = models.CharField(max_length=200, blank=True)
    heatmap = models.FileField(upload_to=_explanation_upload_to, max_length=300, blank=True)
    overlay = models.FileField(upload_to=_explanation_upload_to, max_length=300, blank=True)
    scores = models.JSONField(default=dict, blank=True)
    mass_in_lungs = models.FloatField(
        null=True,
        blank=True,
        help_text="Share of the heatmap's positive mass inside the image's lung mask; "
        "empty when the image has no lung mask.",
    )
    seconds = models.FloatField(null=True, blank=True)
    explainer_version = models.CharField(
        max_length=200,
        blank=True,
        help_text="The code that computed it (apps.explain.jobs.explainer_version); empty for "
        "explanations made before it was recorded.",
    )

    class Meta:
        ordering = ("image", "method", "-created_at")
        constraints = [
            # One live job per image, method and model: asking twice returns the first.
            models.UniqueConstraint(
                fields=["image", "method", "model_version"],
                condition=~Q(status="failed"),
                name="explain_one_live_job_per_image_method_model",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_method_display()} for image {self.image_id} ({self.status})"

    @property
    def title(self) -> str:
        return self.get_method_display()

    def retry_refusal(self) -> str | None:
        """One live explanation per image, method and model: a failed one that was asked
        for again since stays failed (the new one is live)."""
        live = (
            Explanation.objects.filter(
                image_id=self.image_id, method=self.method, model_version_id=self.model_version_id
            )
            .exclude(status=Explanation.Status.FAILED)
            .first()
        )
        if live is None:
            return None
        return (
            f"{self.title} was asked for again already; it is {live.get_status_display().lower()}."
        )

    def retry_details(self) -> dict[str, object]:
        return {
            "image": self.image_id,
            "method": self.method,
            "model_version": self.model_version_id,
        }

    @property
    def mass_in_lungs_percent(self) -> float | None:
        return None if self.mass_in_lungs is None else 100 * self.mass_in_lungs


def _inspection_upload_to(instance: InspectionPicture, filename: str) -> str:
    return f"inspections/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.png"


class Inspection(Job):
    """The model inspector: filters, activation maps and every explanation method for one
    model version, one image and one layer (computed on the ``explain`` queue)."""

    job_kind = JobKind(runner="apps.explain.inspector.InspectionRunner", queue="explain")

    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.CASCADE, related_name="inspections"
    )
    reference_image = models.ForeignKey(
        "registry.ReferenceImage",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="inspections",
    )
    case_image = models.ForeignKey(
        "cases.CaseImage",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="inspections",
    )
    layer = models.CharField(
        max_length=200, blank=True, help_text="Empty: the last convolution's activation."
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    layers = models.JSONField(default=list, blank=True)
    results = models.JSONField(default=dict, blank=True)
    seconds = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.CheckConstraint(
                condition=Q(reference_image__isnull=False, case_image__isnull=True)
                | Q(reference_image__isnull=True, case_image__isnull=False),
                name="explain_inspection_one_image",
            ),
        ]

    def __str__(self) -> str:
        return f"Inspection {self.pk} of version {self.model_version_id} ({self.status})"

    @property
    def image_file(self) -> FieldFile:
        image = self.reference_image or self.case_image
        if image is None:  # excluded by the explain_inspection_one_image constraint
            raise ValueError(f"Inspection {self.pk} has no image.")
        return image.file


class InspectionPicture(models.Model):
    """One PNG of an inspection: the input, the filters, the activations or a method."""

    inspection = models.ForeignKey(Inspection, on_delete=models.CASCADE, related_name="pictures")
    kind = models.CharField(max_length=30)
    title = models.CharField(max_length=200)
    file = models.FileField(upload_to=_inspection_upload_to, max_length=300)
    scores = models.JSONField(default=dict, blank=True)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ("inspection", "position")
        constraints = [
            models.UniqueConstraint(fields=["inspection", "kind"], name="explain_picture_kind")
        ]

    def __str__(self) -> str:
        return f"{self.kind} of inspection {self.inspection_id}"

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from cxrplatform.jobs import Job


def _explanation_upload_to(instance: Explanation, filename: str) -> str:
    suffix = filename.rsplit(".", 1)[-1]
    return f"explanations/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.{suffix}"


class Explanation(Job):
    """A heatmap for one image, one method and one model version.

    Stores the raw map (float32 ``.npy`` at the model's input resolution, values
    in [0, 1]) and a rendered overlay PNG with a colour scale, plus the
    faithfulness scores that say how much to trust it.
    """

    class Method(models.TextChoices):
        GRADCAM = "gradcam", "Grad-CAM"
        OCCLUSION = "occlusion", "Occlusion sensitivity"
        SMOOTHGRAD = "smoothgrad", "SmoothGrad"
        INTEGRATED_GRADIENTS = "ig", "Integrated gradients"
        GUIDED_BACKPROP = "guided", "Guided backpropagation"

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
    seconds = models.FloatField(null=True, blank=True)

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

    def mark_done(
        self,
        *,
        params: dict,
        target_class: int,
        target_label: str,
        layer: str,
        heatmap: str,
        overlay: str,
        scores: dict,
        seconds: float,
    ) -> None:
        self._mark_done(
            params=params,
            target_class=target_class,
            target_label=target_label,
            layer=layer,
            heatmap=heatmap,
            overlay=overlay,
            scores=scores,
            seconds=seconds,
        )

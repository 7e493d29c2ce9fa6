from __future__ import annotations

from django.db import models


class Explanation(models.Model):
    """A heatmap job for one image and method.

    Minimal for now (the explanations issue adds parameters, raw heatmap and
    overlay files, scores and timings); it exists so cases can already list
    their explanations and the job state machine has its shape.
    """

    class Method(models.TextChoices):
        GRADCAM = "gradcam", "Grad-CAM"
        OCCLUSION = "occlusion", "Occlusion sensitivity"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    image = models.ForeignKey(
        "cases.CaseImage", on_delete=models.CASCADE, related_name="explanations"
    )
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    method = models.CharField(max_length=30, choices=Method.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.get_method_display()} for image {self.image_id} ({self.status})"

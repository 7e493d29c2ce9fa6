from __future__ import annotations

from django.db import models
from django.db.models import Q


class ModelVersion(models.Model):
    """One trained model artifact and where it stands in the serving lifecycle.

    Later issues add the data snapshot, training run, parent version and
    metrics history; this is the part every Prediction needs to name the
    model that made it.
    """

    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        CANDIDATE = "candidate", "Candidate"
        PRODUCTION = "production", "Production"
        ARCHIVED = "archived", "Archived"
        FAILED = "failed", "Failed"

    name = models.CharField(max_length=200)
    artifact = models.FileField(upload_to="models/%Y/%m/", max_length=300)
    sha256 = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.CANDIDATE)
    card = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

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

"""Generator versions and the sample grids model admins ask them for.

A sample grid is never a case image: it lives in its own table and its own storage
folder, carries the "synthetic" mark in its pixels and its metadata
(``ml.generate.watermark``), is served to model admins only, and nothing reads it into
a dataset snapshot (snapshots draw from reference images and confirmed case images,
and both entry points refuse marked images: ``apps.cases.validation`` and
``apps.models.datasets.import_reference_dataset``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from cxrplatform.jobs import Job, JobKind
from ml.data.labels import CLASS_CHOICES

MAX_SAMPLES = 32


class GeneratorVersion(models.Model):
    """One trained generator file, identified by its sha256 (``register_generator``)."""

    name = models.CharField(max_length=100)
    artifact = models.CharField(
        max_length=500,
        help_text="Path of the .keras file: relative to the project folder when inside it.",
    )
    sha256 = models.CharField(max_length=64, unique=True)
    card = models.JSONField(default=dict, blank=True)
    registered_at = models.DateTimeField(auto_now_add=True)
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        ordering = ("-registered_at", "-pk")

    def __str__(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    @property
    def path(self) -> Path:
        path = Path(self.artifact)
        return path if path.is_absolute() else Path(settings.BASE_DIR) / path

    @property
    def chosen_epoch(self) -> int | None:
        return (self.card.get("selection") or {}).get("chosen_epoch")


def _grid_upload_to(instance: SampleGrid, filename: str) -> str:
    return f"synthetic/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.png"


class SampleGrid(Job):
    """A PNG grid of ``n`` samples of one class from one generator version (queue
    ``explain``: a short TensorFlow job like an explanation)."""

    job_kind = JobKind(runner="apps.generator.jobs.SampleGridRunner", queue="explain")

    version = models.ForeignKey(GeneratorVersion, on_delete=models.PROTECT, related_name="grids")
    label = models.CharField(max_length=20, choices=CLASS_CHOICES)
    n = models.PositiveSmallIntegerField(
        default=16, validators=[MinValueValidator(1), MaxValueValidator(MAX_SAMPLES)]
    )
    seed = models.PositiveIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    image = models.FileField(upload_to=_grid_upload_to, max_length=300, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    metadata = models.JSONField(
        default=dict, blank=True, help_text="What the PNG's 'cxr-synthetic' text chunk says."
    )
    seconds = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-pk")

    def __str__(self) -> str:
        return f"synthetic {self.label} x{self.n} (seed {self.seed}) from {self.version}"

"""The reading room: where each case stands with its radiologist, and its signed reports.

A case's ``Reading`` row says whether it is new, being read or reported; it is made the
first time a radiologist opens the case (a case without one is new). A ``Report`` is one
signed version of the radiologist's impression: signing again (an amendment) adds the
next version and never changes an earlier one, so the history stays. Change these rows
only through ``apps.reading.services`` (audited).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ReadingStatus(models.TextChoices):
    NEW = "new", "New"
    IN_READING = "in_reading", "In reading"
    REPORTED = "reported", "Reported"


class Impression(models.TextChoices):
    """The radiologist's impression; the first three are the model's classes and enter
    the labelling pipeline as the radiologist's verdict."""

    COVID19 = "covid19", "COVID-19"
    PNEUMONIA = "pneumonia", "Other pneumonia"
    NORMAL = "normal", "Normal"
    OTHER = "other", "Other finding"


class Urgency(models.TextChoices):
    ROUTINE = "routine", "Routine"
    URGENT = "urgent", "Urgent"
    CRITICAL = "critical", "Critical (call the clinician)"


class Reading(models.Model):
    """Where one case stands in its site's worklist."""

    case = models.OneToOneField(
        "cases.Case", on_delete=models.CASCADE, primary_key=True, related_name="reading"
    )
    status = models.CharField(
        max_length=20, choices=ReadingStatus.choices, default=ReadingStatus.NEW
    )
    reader = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The radiologist who opened it last (in reading) or signed it (reported).",
    )
    started_at = models.DateTimeField(null=True, blank=True)
    first_signed_at = models.DateTimeField(null=True, blank=True)
    upload_to_signed_seconds = models.FloatField(
        null=True,
        blank=True,
        help_text="Seconds from the upload to the first signed report (the metric "
        "cxr_reading_upload_to_signed_seconds observes it once).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Reading of case {self.case_id}: {self.status}"


class Report(models.Model):
    """One signed version of a case's report; amendments add versions, never edit one."""

    case = models.ForeignKey("cases.Case", on_delete=models.CASCADE, related_name="reports")
    version = models.PositiveIntegerField(help_text="1, 2, ... per case; the highest is current.")
    impression = models.CharField(max_length=20, choices=Impression.choices)
    text = models.TextField(max_length=5000, blank=True, help_text="Findings, free text.")
    urgency = models.CharField(max_length=20, choices=Urgency.choices, default=Urgency.ROUTINE)
    amendment_reason = models.TextField(
        max_length=1000, blank=True, help_text="Why this version replaces the one before."
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="signed_reports"
    )
    signed_at = models.DateTimeField()

    class Meta:
        ordering = ("case", "-version")
        constraints = [
            models.UniqueConstraint(fields=["case", "version"], name="reading_report_versioned"),
        ]

    def __str__(self) -> str:
        return f"Report v{self.version} of case {self.case_id}"

    @property
    def is_amendment(self) -> bool:
        return self.version > 1

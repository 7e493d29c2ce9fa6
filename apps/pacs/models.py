"""The PACS connection's rows.

* :class:`StudyLink`: a case received from the PACS and what the return path needs of
  the original study (Study Instance UID, patient, the original instances' UIDs). These
  identifiers never enter the de-identified store (cases, images, their DICOM copies):
  they are kept here only, encrypted (``apps.pacs.protect``), and erased after
  ``CXR_PACS_MAPPING_RETENTION_DAYS`` (``purge_expired_links``); the case stays.
* :class:`ReturnedObject`: one DICOM object sent back to the PACS (a Structured Report
  or a Secondary Capture of one image's prediction). Its SOP Instance UID is made once
  and kept, so a retry sends the same object again and the PACS stores it once.
* :class:`Refusal`: an instance the listener refused, with the reason (never the
  instance itself, nor its identifiers): what the refused counter counts.
"""

from __future__ import annotations

from django.db import models


class StudyLink(models.Model):
    case = models.OneToOneField("cases.Case", on_delete=models.CASCADE, related_name="pacs_link")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    calling_ae = models.CharField(max_length=16)
    # Encrypted JSON: the study's and patient's identifiers and, per stored image (by its
    # position in the case), the original SOP/series UIDs (apps.pacs.protect).
    sealed = models.BinaryField()
    erased_at = models.DateTimeField(null=True, blank=True)
    # A keyed hash of the original Study Instance UID (apps.pacs.protect.study_key), never
    # the UID: a later association of the same study adds its images to this case. Empty
    # for a study without a UID, or a link the migration could not unseal: never joined.
    study_key = models.CharField(max_length=64, blank=True, default="", db_index=True)

    class Meta:
        ordering = ("-received_at",)

    def __str__(self) -> str:
        return f"PACS study of case {self.case_id}"


class ReturnedObject(models.Model):
    class Kind(models.TextChoices):
        SR = "sr", "Structured Report"
        SC = "sc", "Secondary Capture"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    image = models.ForeignKey("cases.CaseImage", on_delete=models.CASCADE, related_name="+")
    prediction = models.ForeignKey("cases.Prediction", on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=2, choices=Kind.choices)
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    series_instance_uid = models.CharField(max_length=64)
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["prediction", "kind"], name="pacs_one_object_per_kind")
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of prediction {self.prediction_id} ({self.state})"


class Refusal(models.Model):
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    calling_ae = models.CharField(max_length=16)
    address = models.CharField(max_length=64)
    reason = models.CharField(max_length=300)
    # A prefix of the SHA-256 of the refused bytes (apps.cases.validation.upload_ref).
    upload_ref = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ("-at",)

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.calling_ae}: {self.reason}"


class PulledStudy(models.Model):
    """A study the DICOMweb pull has taken (``apps.pacs.dicomweb``), so it is taken once.
    Named by a keyed hash of its Study Instance UID, never the UID itself."""

    key = models.CharField(max_length=64, unique=True)
    pulled_at = models.DateTimeField(auto_now_add=True, db_index=True)
    case = models.ForeignKey(
        "cases.Case", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    def __str__(self) -> str:
        return f"pulled study {self.key[:12]}"

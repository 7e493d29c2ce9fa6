from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from django.conf import settings
from django.db import models, transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.urls import reverse
from django.utils import timezone

from cxrplatform.jobs import Job, JobKind, JobStatus
from ml.data.labels import CLASS_CHOICES

if TYPE_CHECKING:
    from apps.cases.kinds import StudyKind
    from apps.models.models import ModelVersion

LABEL_CHOICES = CLASS_CHOICES
UNUSABLE = "unusable"
VERDICT_CHOICES = [*LABEL_CHOICES, (UNUSABLE, "Unusable image")]


class Modality(models.TextChoices):
    """What kind of study a case is: every image of a case is of its one modality. What
    each one runs and shows is its row in ``apps.cases.kinds.KINDS``."""

    XRAY = "xray", "Chest X-ray"
    CT = "ct", "Chest CT slices"


J = TypeVar("J", bound=Job)
_NEVER = datetime.min.replace(tzinfo=UTC)


def _newest_result_first(job: Job) -> tuple[bool, bool, datetime, int]:
    done = job.status == JobStatus.DONE
    finished = job.finished_at if done else None
    return (done, finished is not None, finished or _NEVER, job.pk or 0)


def current_job(jobs: Iterable[J]) -> J | None:
    """The one job of ``jobs`` (one image's predictions, its segmentations, its
    explanations by one method) that speaks for the image: its newest result, the newest
    DONE job by ``finished_at``, then by pk; without one, its newest job by pk (pending,
    running or failed: what is under way, or why it failed).

    The one rule for "the result of this image": the pages, the API, the files a page
    loads, the model an explanation explains and the job a retry of the image names all
    read it here, so they name the same row. A retried job keeps its pk: when it finishes
    after a newer job did, it is the newer result. Give it a prefetched set (no query)
    or a queryset (its rows are read).
    """
    return max(jobs, key=_newest_result_first, default=None)


def newest_result(jobs: Iterable[J]) -> J | None:
    """The image's result by :func:`current_job`: None when none of ``jobs`` is done."""
    job = current_job(jobs)
    return job if job is not None and job.status == JobStatus.DONE else None


def _image_upload_to(instance: CaseImage, filename: str) -> str:
    # Random names: the original file name may carry patient identifiers.
    # Every upload's `file` is a PNG of its decoded pixels (apps.cases.deidentify);
    # a DICOM upload's de-identified DICOM is `original`.
    return f"cases/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.png"


def _original_upload_to(instance: CaseImage, filename: str) -> str:
    return f"cases/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.dcm"


def _lung_upload_to(instance: Prediction, filename: str) -> str:
    # The lung mask and outline PNGs of a prediction's image.
    return f"lungs/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.png"


def _ct_mask_upload_to(instance: Segmentation, filename: str) -> str:
    # The mask PNGs of a CT slice's segmentation.
    return f"ct-masks/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.png"


class CaseQuerySet(models.QuerySet["Case"]):
    def with_status(self) -> CaseQuerySet:
        """Annotate ``derived_status``, the same rule as ``Case.status``, for filtering in SQL."""
        predictions = Prediction.objects.filter(image__case=models.OuterRef("pk"))
        segmentations = Segmentation.objects.filter(image__case=models.OuterRef("pk"))
        active = [Prediction.Status.PENDING, Prediction.Status.RUNNING]

        def any_job(**filters: object) -> models.Q:
            return models.Q(models.Exists(predictions.filter(**filters))) | models.Q(
                models.Exists(segmentations.filter(**filters))
            )

        return self.annotate(
            derived_status=models.Case(
                models.When(~any_job(), then=models.Value("pending")),
                models.When(any_job(status__in=active), then=models.Value("processing")),
                models.When(any_job(status=Prediction.Status.FAILED), then=models.Value("failed")),
                default=models.Value("done"),
                output_field=models.CharField(),
            )
        )


class CaseManager(models.Manager.from_queryset(CaseQuerySet)):  # type: ignore[misc]
    """Cases not deleted: a deleted case disappears from every page, list and API at once
    (its files and rows are purged later, ``apps.cases.retention``)."""

    def get_queryset(self) -> CaseQuerySet:
        return super().get_queryset().filter(deleted_at__isnull=True)


class CaseImageManager(models.Manager["CaseImage"]):
    """Images of cases not deleted (labelling queues, snapshots, the API, the pages)."""

    def get_queryset(self) -> models.QuerySet[CaseImage]:
        return super().get_queryset().filter(case__deleted_at__isnull=True)


class AllCaseImagesManager(models.Manager["CaseImage"]):
    """Every image, of deleted cases too (retention)."""


class Case(models.Model):
    """One clinical submission: one or more images of the same patient, of one modality.

    The modality is the case's, not each image's: a case is one study read by one
    model (X-rays by the classifier, CT slices by the CT segmenter), so its page, its
    status and its API representation have one shape, and an upload that mixes
    X-rays and CT slices is refused (apps.cases.services).
    """

    STATUS_CHOICES = [
        ("pending", "Waiting"),
        ("processing", "Processing"),
        ("done", "Done"),
        ("failed", "Failed"),
    ]

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="cases"
    )
    site = models.ForeignKey(
        "sites.Site",
        on_delete=models.PROTECT,
        related_name="cases",
        help_text="Where the case was uploaded: its uploader's site then (apps.sites), "
        "never a DICOM file's institution.",
    )
    patient_ref = models.CharField(
        max_length=64,
        blank=True,
        help_text="Pseudonymous patient reference (never a name or a hospital ID).",
    )
    patient_pseudonym = models.CharField(
        max_length=64,
        blank=True,
        db_index=True,
        help_text="The DICOM files' pseudonym of the hospital patient ID (a keyed hash, "
        "CXR_PSEUDONYM_KEY), kept when the clinician typed their own reference; empty for "
        "PNG and JPEG uploads. Erasure by hospital ID finds the case by it.",
    )
    notes = models.TextField(blank=True, max_length=5000)
    modality = models.CharField(
        max_length=10,
        choices=Modality.choices,
        default=Modality.XRAY,
        help_text="Chest X-rays (classified) or axial chest CT slices (segmented).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(
        null=True,
        blank=True,
        db_index=True,
        help_text="Deleted by its clinician: hidden everywhere; files and rows are purged "
        "CXR_DELETED_CASE_RETENTION_DAYS later (apps.cases.retention).",
    )

    # The default manager hides deleted cases; `all_objects` sees them (retention, backups).
    objects = CaseManager()
    all_objects = CaseQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"Case {self.pk}"

    @property
    def kind(self) -> StudyKind:
        """The case's row of the study-kind table (``apps.cases.kinds``)."""
        from apps.cases.kinds import kind_of

        return kind_of(self)

    @property
    def status(self) -> str:
        """Derived from the jobs (predictions, CT segmentations), so it can never disagree
        with them."""
        statuses = {
            job.status
            for image in self.images.all()
            for jobs in (image.predictions.all(), image.segmentations.all())
            for job in jobs
        }
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
        # Text found in its margins at intake (apps.cases.validation.text_hold): kept out
        # of expert labelling, and so of datasets, until its owner releases it.
        HELD = "held", "Held for review"

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="images")
    # What the viewer, the worker and the labelling tools read: a PNG re-encoded
    # from the decoded pixels of a PNG or JPEG upload (no metadata of the upload),
    # or for a DICOM upload an 8-bit PNG rendition of it.
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
    intake_note = models.CharField(
        max_length=300,
        blank=True,
        help_text="What intake did to the upload that its viewer should know (a CMYK or "
        "YCCK JPEG converted to grayscale); empty for most images.",
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACCEPTED)
    # Set by apps.cases.labelling when enough annotators agree; the training
    # set only ever takes confirmed labels.
    confirmed_label = models.CharField(max_length=20, choices=VERDICT_CHOICES, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    # The default manager hides images of deleted cases; `all_objects` sees them.
    objects = CaseImageManager()
    all_objects = AllCaseImagesManager()

    class Meta:
        ordering = ("case", "pk")

    def __str__(self) -> str:
        return f"Image {self.pk} of case {self.case_id}"

    @property
    def content_type(self) -> str:
        """The stored file's media type (PNG; JPEG for a file stored as uploaded before
        uploads were re-encoded and not converted since)."""
        name = (self.file.name or "").lower()
        return "image/jpeg" if name.endswith((".jpg", ".jpeg")) else "image/png"

    @property
    def current_explanations(self) -> list:
        """The current explanation per method (:func:`current_job`; Grad-CAM first), from
        the prefetched set."""
        by_method: dict[str, list] = {}
        for explanation in self.explanations.all():
            by_method.setdefault(explanation.method, []).append(explanation)
        current = [current_job(explanations) for explanations in by_method.values()]
        return sorted(current, key=lambda e: (e.method != "gradcam", e.method))

    @property
    def live_state(self) -> str:
        """Changes whenever anything shown about this image changes (for live pages)."""
        prediction = self.latest_prediction
        segmentation = self.latest_segmentation
        parts = [prediction.status if prediction else "none", self.confirmed_label]
        if segmentation is not None:
            parts.append(f"segmentation:{segmentation.status}")
        parts += [f"{e.method}:{e.status}" for e in self.current_explanations]
        return "|".join(parts)

    @property
    def in_progress(self) -> bool:
        jobs = [self.latest_prediction, self.latest_segmentation, *self.current_explanations]
        return any(job is not None and not job.is_finished for job in jobs)

    @property
    def latest_prediction(self) -> Prediction | None:
        """The image's classification by :func:`current_job` (None for a CT slice), from
        the prefetched set."""
        return current_job(self.predictions.all())

    @property
    def latest_segmentation(self) -> Segmentation | None:
        """The slice's CT segmentation by :func:`current_job` (None for an X-ray), from
        the prefetched set."""
        return current_job(self.segmentations.all())


class ImageJob(Job):
    """A job on one case image (its ``image``): the image's owner retries it when it
    failed (``apps.cases.retry_views``, the API's retry routes), from the case page."""

    image: CaseImage  # each kind declares the foreign key, with its own related name
    model_version: ModelVersion | None  # and the registry version that made its result

    class Meta:
        abstract = True

    @classmethod
    def retryable_by(cls, user) -> models.QuerySet:
        """The jobs of this kind that ``user`` may retry: those of their own cases that are
        not deleted (a deleted case is gone at once, its jobs with it: a 404)."""
        case = "image__case"  # each kind's own `image`, which the base does not hold
        return cls._default_manager.filter(
            **{f"{case}__owner": user, f"{case}__deleted_at__isnull": True}
        )

    def case_page(self) -> str:
        return reverse("cases:detail", args=[self.image.case_id])


class Prediction(ImageJob):
    """A classification job and its result; a state machine (pending→running→done|failed)."""

    job_kind = JobKind(runner="apps.cases.inference.PredictionRunner", queue="inference")

    image = models.ForeignKey(CaseImage, on_delete=models.CASCADE, related_name="predictions")
    model_version = models.ForeignKey(
        "registry.ModelVersion",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="predictions",
    )
    label = models.CharField(max_length=20, choices=LABEL_CHOICES, blank=True)
    # The model's probabilities, never changed by a site's operating point: the label is
    # made from them at the point below.
    probabilities = models.JSONField(default=dict, blank=True)
    operating_point = models.ForeignKey(
        "sites.SiteOperatingPoint",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="predictions",
        help_text="The case's site operating point that made the label; null: the model's "
        "own point.",
    )
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
    def title(self) -> str:
        return "Classification"

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


# Each kind of CT mask and the Segmentation field that stores it.
CT_MASK_FIELDS = {
    "lungs": "lung_mask",
    "ggo": "ggo_mask",
    "consolidation": "consolidation_mask",
    "infection": "infection_mask",
    "lung_outline": "lung_outline",
}
CT_MASK_KINDS = tuple(CT_MASK_FIELDS)


class Segmentation(ImageJob):
    """A CT slice's segmentation job and its result (pending→running→done|failed).

    The masks are 8-bit PNGs at the slice's size (255 = the class; for the lung
    outline, the contour); the figures are pixel counts and percentages of the lung
    area (no pixel spacing is known for a PNG or JPEG slice).
    """

    job_kind = JobKind(runner="apps.cases.segmentation.SegmentationRunner", queue="segmentation")

    image = models.ForeignKey(CaseImage, on_delete=models.CASCADE, related_name="segmentations")
    model_version = models.ForeignKey(
        "registry.ModelVersion",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="segmentations",
    )
    segmenter_version = models.CharField(max_length=100, blank=True)
    lung_mask = models.FileField(upload_to=_ct_mask_upload_to, max_length=300, blank=True)
    ggo_mask = models.FileField(upload_to=_ct_mask_upload_to, max_length=300, blank=True)
    consolidation_mask = models.FileField(upload_to=_ct_mask_upload_to, max_length=300, blank=True)
    infection_mask = models.FileField(upload_to=_ct_mask_upload_to, max_length=300, blank=True)
    lung_outline = models.FileField(upload_to=_ct_mask_upload_to, max_length=300, blank=True)
    lungs_found = models.BooleanField(null=True, blank=True)
    message = models.TextField(
        blank=True, help_text="Empty when lungs were found; else why not (e.g. an abdomen slice)."
    )
    lung_area = models.PositiveIntegerField(null=True, blank=True, help_text="Lung pixels.")
    infection_area = models.PositiveIntegerField(null=True, blank=True)
    ggo_area = models.PositiveIntegerField(null=True, blank=True)
    consolidation_area = models.PositiveIntegerField(null=True, blank=True)
    percent_affected = models.FloatField(
        null=True, blank=True, help_text="Infected share of the lung area, in percent."
    )
    percent_ggo = models.FloatField(null=True, blank=True)
    percent_consolidation = models.FloatField(null=True, blank=True)
    max_infection_probability = models.FloatField(
        null=True, blank=True, help_text="The highest infection probability on the slice."
    )
    inference_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(status="done") | models.Q(model_version__isnull=False),
                name="cases_segmentation_done_has_model",
            ),
        ]

    def __str__(self) -> str:
        return f"Segmentation {self.pk} ({self.status})"

    def mask_field(self, kind: str):
        """The stored file of a mask kind (``CT_MASK_KINDS``)."""
        return getattr(self, CT_MASK_FIELDS[kind])

    @property
    def has_masks(self) -> bool:
        return self.status == "done" and bool(self.lung_mask)


@receiver(post_delete, sender=Segmentation, dispatch_uid="cases.segmentation.delete_mask_files")
def _delete_mask_files(sender, instance: Segmentation, **kwargs) -> None:
    """A deleted segmentation's mask files go too, once the deletion commits."""
    fields = [instance.mask_field(kind) for kind in CT_MASK_KINDS]
    files = [(f.storage, f.name) for f in fields if f.name]

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


class Adjudication(models.Model):
    """The adjudicator's decision on a disputed image (agreement policy "adjudication").

    It sets the image's confirmed label and stands until the adjudicator decides
    again; the readers' verdicts stay as they were, for the agreement statistics.
    """

    image = models.OneToOneField(CaseImage, on_delete=models.CASCADE, related_name="adjudication")
    adjudicator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="adjudications"
    )
    label = models.CharField(max_length=20, choices=VERDICT_CHOICES)
    note = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-updated_at",)

    def __str__(self) -> str:
        return f"{self.label} by adjudicator {self.adjudicator_id} on image {self.image_id}"


class LabelPolicy(models.Model):
    """The label agreement policy in force (apps.cases.labelling): one row, or none.

    Model admins change it on the web (``cases:label-policy``; each change audited
    ``labels.policy``), so a deployment can turn adjudication on without a restart.
    Until the first change there is no row and the policy is the one the environment
    sets (``CXR_LABEL_POLICY``, ``CXR_LABEL_AGREEMENT``); read it through
    ``labelling.current_policy()``, never this model or those settings directly.
    """

    SINGLETON = 1
    MAX_READERS = 10

    class Policy(models.TextChoices):
        UNANIMOUS = "unanimous", "Unanimous: k readers agree and none dissents"
        MAJORITY = "majority", "Majority: once k readers have read, more than half agree"
        ADJUDICATION = "adjudication", "Adjudication: unanimous; an adjudicator decides disputes"

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON, editable=False)
    policy = models.CharField(max_length=20, choices=Policy.choices)
    readers = models.PositiveSmallIntegerField(
        help_text="k, the readers the policy asks for (1 to 10)."
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="cases_label_policy_singleton"),
            models.CheckConstraint(
                condition=models.Q(policy__in=["unanimous", "majority", "adjudication"]),
                name="cases_label_policy_known",
            ),
            models.CheckConstraint(
                condition=models.Q(readers__gte=1, readers__lte=10),
                name="cases_label_policy_readers_1_to_10",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.policy} (k = {self.readers})"

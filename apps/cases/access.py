"""Who may see which cases and images: one definition for the web pages and the API."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Prefetch, QuerySet
from django.utils.crypto import salted_hmac

from apps.accounts.roles import ADJUDICATOR, ANNOTATOR, CLINICIAN, has_role
from apps.cases.models import Case, CaseImage, CaseQuerySet, Prediction


def own_cases(user) -> CaseQuerySet:
    """A clinician's own cases, with images, predictions and explanations prefetched."""
    return Case.objects.filter(owner=user).prefetch_related(
        Prefetch(
            "images",
            queryset=CaseImage.objects.select_related("adjudication").prefetch_related(
                "predictions__model_version",
                "predictions__operating_point",  # no query while no site point is applied
                "segmentations__model_version",
                "explanations",
                "expert_labels",
            ),
        )
    )


def visible_images(user) -> QuerySet[CaseImage]:
    """Images a user may see: clinicians their own cases', annotators every predicted one
    but those held for review (text in their margins: only their owner sees them until
    released), adjudicators those that readers have given verdicts on."""
    images = CaseImage.objects.none()
    if has_role(user, CLINICIAN):
        images = images | CaseImage.objects.filter(case__owner=user)
    if has_role(user, ANNOTATOR):
        images = images | CaseImage.objects.filter(
            predictions__status=Prediction.Status.DONE
        ).exclude(status=CaseImage.Status.HELD)
    if has_role(user, ADJUDICATOR):
        images = images | CaseImage.objects.filter(expert_labels__isnull=False)
    return images.distinct()


def image_ref(image: CaseImage) -> str:
    """An opaque, stable per-image reference (a keyed hash of the image's id).

    Annotators get it instead of the case id, which would group a patient's images;
    it says nothing about the case, and only the server can compute it.
    """
    digest = salted_hmac(
        "cxr.image-ref", str(image.pk), secret=settings.CXR_PSEUDONYM_KEY, algorithm="sha256"
    )
    return digest.hexdigest()[:24]


def case_id_for(user, image: CaseImage) -> int | None:
    """The image's case id for the case's owner; None for everyone else (annotators)."""
    return image.case_id if image.case.owner_id == user.pk else None

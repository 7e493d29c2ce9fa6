"""Who may see which cases and images: one definition for the web pages and the API."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from apps.accounts.roles import ANNOTATOR, CLINICIAN, has_role
from apps.cases.models import Case, CaseImage, CaseQuerySet, Prediction


def own_cases(user) -> CaseQuerySet:
    """A clinician's own cases, with images, predictions and explanations prefetched."""
    return Case.objects.filter(owner=user).prefetch_related(
        Prefetch(
            "images",
            queryset=CaseImage.objects.prefetch_related(
                "predictions__model_version", "explanations", "expert_labels"
            ),
        )
    )


def visible_images(user) -> QuerySet[CaseImage]:
    """Images a user may see: clinicians their own cases', annotators every predicted one."""
    images = CaseImage.objects.none()
    if has_role(user, CLINICIAN):
        images = images | CaseImage.objects.filter(case__owner=user)
    if has_role(user, ANNOTATOR):
        images = images | CaseImage.objects.filter(predictions__status=Prediction.Status.DONE)
    return images.distinct()

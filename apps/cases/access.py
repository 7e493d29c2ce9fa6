"""Who may see which cases and images: one definition for the web pages and the API."""

from __future__ import annotations

import re

from django.conf import settings
from django.core.cache import cache
from django.db.models import Prefetch, QuerySet
from django.http import Http404
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


def short_ref(image: CaseImage) -> str:
    """What a reader's page calls the image: the first digits of its reference."""
    return image_ref(image)[:6]


# A reference as image_ref makes it: 24 hex digits.
REF_PATTERN = re.compile(r"[0-9a-f]{24}")
REF_CACHE_SECONDS = 24 * 3600


def image_for_ref(ref: str, images: QuerySet[CaseImage]) -> CaseImage | None:
    """The image of ``images`` (what the user may open) whose reference is ``ref``; None
    for any other string. The one lookup of the readers' API routes and web pages.

    A reference is a keyed hash, not an index: the image is found by hashing the ids of
    ``images`` (newest first), and the answer is cached per reference, so a reader's
    later requests for it are one query. A cached id is hashed again before it is used,
    and still has to be among ``images``."""
    if not REF_PATTERN.fullmatch(ref):
        return None
    key = f"image-ref:v1:{ref}"
    pk = cache.get(key)
    if pk is None or image_ref(CaseImage(pk=pk)) != ref:
        candidates = images.prefetch_related(None).order_by("-pk").values_list("pk", flat=True)
        pk = next((p for p in candidates.iterator() if image_ref(CaseImage(pk=p)) == ref), None)
        if pk is None:
            return None
        cache.set(key, pk, REF_CACHE_SECONDS)
    return images.filter(pk=pk).first()


def reader_page_images(user) -> QuerySet[CaseImage]:
    """What a reader's web pages may open: what the user may see (``visible_images``),
    never an image held for review."""
    return visible_images(user).exclude(status=CaseImage.Status.HELD)


def reader_image(user, ref: str, images: QuerySet[CaseImage] | None = None) -> CaseImage:
    """The image a reader's page names by its reference (:func:`image_for_ref`) among
    ``images`` (by default :func:`reader_page_images`); 404 for any other string."""
    image = image_for_ref(ref, reader_page_images(user) if images is None else images)
    if image is None:
        raise Http404("No image of yours has this reference.")
    return image


def case_id_for(user, image: CaseImage) -> int | None:
    """The image's case id for the case's owner; None for everyone else (annotators)."""
    return image.case_id if image.case.owner_id == user.pk else None

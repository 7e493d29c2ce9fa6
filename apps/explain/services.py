"""Explanation services: ask for a heatmap; the same path for the UI, the API
and the automatic Grad-CAM after each prediction."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from apps.accounts.models import record
from apps.cases.models import CaseImage
from apps.explain.models import Explanation
from apps.models.models import ModelVersion
from cxrplatform.errors import Refused
from cxrplatform.jobs import enqueue_job

AUTOMATIC_METHOD = Explanation.Method.GRADCAM


class ExplanationUnavailable(Refused):
    pass


def _explained_version(image: CaseImage) -> ModelVersion:
    """Explanations explain the image's result (a prediction, a CT slice's segmentation:
    its study kind's job), so they use the model that made it."""
    kind = image.case.kind
    result = kind.result_of(image)
    if result is None or result.model_version is None:  # done: always has a version
        raise ExplanationUnavailable(kind.no_result_yet)
    return result.model_version


@transaction.atomic
def request_explanation(*, image: CaseImage, method: str, requested_by=None) -> Explanation:
    """Return the live explanation for (image, method, model) or queue a new one.

    Idempotent: asking again while one is pending, running or done returns
    it; after a failure a new attempt is queued.
    """
    if method not in Explanation.Method.values:
        raise ExplanationUnavailable(
            f"Unknown explanation method {method!r}; choose from "
            f"{', '.join(Explanation.Method.values)}."
        )
    kind = image.case.kind
    if method not in kind.explain_methods:
        raise ExplanationUnavailable(
            kind.method_refused.format(method=Explanation.Method(method).label)
        )
    version = _explained_version(image)
    existing = (
        Explanation.objects.filter(image=image, method=method, model_version=version)
        .exclude(status=Explanation.Status.FAILED)
        .first()
    )
    if existing is not None:
        return _audited(existing, requested_by=requested_by, queued=False)
    try:
        with transaction.atomic():
            explanation = Explanation.objects.create(
                image=image, method=method, model_version=version, requested_by=requested_by
            )
    except IntegrityError:
        # A concurrent request created it first (partial unique constraint).
        existing = Explanation.objects.exclude(status=Explanation.Status.FAILED).get(
            image=image, method=method, model_version=version
        )
        return _audited(existing, requested_by=requested_by, queued=False)
    enqueue_job(explanation)
    return _audited(explanation, requested_by=requested_by, queued=True)


def _audited(explanation: Explanation, *, requested_by, queued: bool) -> Explanation:
    """Every request by a user is audited, also one answered by an existing explanation;
    the automatic Grad-CAM after each prediction (no user) is not."""
    if requested_by is not None:
        record(
            actor=requested_by,
            action="explanation.request",
            target=explanation,
            after={
                "image": explanation.image_id,
                "method": explanation.method,
                "model_version": explanation.model_version_id,
                "queued": queued,
                "status": explanation.status,
            },
        )
    return explanation

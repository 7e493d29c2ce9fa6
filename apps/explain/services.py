"""Explanation services: ask for a heatmap; the same path for the UI, the API
and the automatic Grad-CAM after each prediction."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from apps.cases.models import CaseImage, Prediction
from apps.explain.models import Explanation
from apps.models.models import ModelVersion
from cxrplatform.jobs import enqueue_job

AUTOMATIC_METHOD = Explanation.Method.GRADCAM


class ExplanationUnavailable(Exception):  # noqa: N818 - reads as an outcome
    pass


def _explained_version(image: CaseImage) -> ModelVersion:
    """Explanations explain a prediction, so they use the model that made it."""
    prediction = (
        image.predictions.filter(status=Prediction.Status.DONE)
        .select_related("model_version")
        .order_by("-finished_at", "-pk")
        .first()
    )
    if prediction is None or prediction.model_version is None:  # done: always has a version
        raise ExplanationUnavailable(
            "This image has no finished prediction yet; explanations follow the prediction."
        )
    return prediction.model_version


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
    version = _explained_version(image)
    existing = (
        Explanation.objects.filter(image=image, method=method, model_version=version)
        .exclude(status=Explanation.Status.FAILED)
        .first()
    )
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            explanation = Explanation.objects.create(
                image=image, method=method, model_version=version, requested_by=requested_by
            )
    except IntegrityError:
        # A concurrent request created it first (partial unique constraint).
        return Explanation.objects.exclude(status=Explanation.Status.FAILED).get(
            image=image, method=method, model_version=version
        )
    enqueue_job(explanation)
    return explanation

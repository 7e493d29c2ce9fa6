"""Run one prediction job (worker code: imports ml and TensorFlow lazily)."""

from __future__ import annotations

import logging

from django.db import transaction

from apps.cases.models import Prediction
from apps.models.services import get_production_version
from cxrplatform.jobs import claim_job, failure_recorded

log = logging.getLogger(__name__)


class NoProductionModelError(RuntimeError):
    pass


class UnreadableImageError(RuntimeError):
    """The stored file is missing or corrupt: the job fails with this message, the worker lives."""


def run_prediction(*, prediction_id: int) -> Prediction | None:
    """Classify the image of one Prediction with the current production model.

    Idempotent: a redelivered message for a finished job does nothing; a job
    left ``running`` by a killed worker runs again. Every failure other than
    a database outage is written on the row, never lost.
    """
    prediction = claim_job(Prediction, prediction_id, related=("image",))
    if prediction is None or prediction.is_finished:
        return prediction

    with failure_recorded(prediction, what="Classification"):
        from apps.models.serving import classifier_for
        from ml.data.preprocess import open_image

        version = get_production_version()
        if version is None:
            raise NoProductionModelError(
                "No production model is registered; a model admin must promote one."
            )
        classifier = classifier_for(version)
        try:
            with prediction.image.file.open("rb") as fh:
                image = open_image(fh)
        except (OSError, SyntaxError, ValueError) as exc:
            raise UnreadableImageError(
                f"The stored image could not be read ({type(exc).__name__}: {exc})."
            ) from exc
        result = classifier.predict(image)
        with transaction.atomic():
            prediction.mark_done(
                model_version_id=version.pk,
                label=result.label,
                probabilities=result.probabilities,
                preprocess_ms=result.preprocess_ms,
                inference_ms=result.inference_ms,
            )
            # Every prediction gets a Grad-CAM, queued once this commits.
            from apps.explain.services import AUTOMATIC_METHOD, request_explanation

            request_explanation(image=prediction.image, method=AUTOMATIC_METHOD)
    return prediction

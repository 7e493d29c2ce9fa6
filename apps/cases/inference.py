"""Run one prediction job (worker code: imports ml lazily; on the default LiteRT runtime,
never TensorFlow)."""

from __future__ import annotations

import logging

from django.conf import settings

from apps.cases.lungs import LungFields, lungs_for_classifier, segment_lungs
from apps.cases.models import Prediction
from apps.models.models import ModelVersion
from apps.sites.drift import features_of as drift_features_of
from apps.sites.drift import record as record_drift
from apps.sites.services import label_for
from cxrplatform.files import StoredFiles
from cxrplatform.jobs import JobResult, JobRunner

log = logging.getLogger(__name__)


class NoProductionModelError(RuntimeError):
    pass


class UnreadableImageError(RuntimeError):
    """The stored file is missing or corrupt: the job fails with this message, the worker lives."""


class PredictionRunner(JobRunner[Prediction]):
    """Classify the image of one Prediction with the current production model and store
    its lung fields (mask, outline, box, area) with the result; its Grad-CAM is queued
    with it."""

    what = "Classification"
    related = ("image__case",)
    lungs: LungFields
    version_id: int

    def compute(self, prediction: Prediction) -> JobResult:
        from apps.models.serving import classifier_for
        from ml.data.preprocess import open_image

        # The study kind's model (apps.cases.kinds): the classifier for an X-ray.
        version = ModelVersion.objects.production(task=prediction.image.case.kind.task)
        if version is None:
            raise NoProductionModelError(
                "No production model is registered; a model admin must promote one."
            )
        # LiteRT by default: the inference worker never imports TensorFlow.
        classifier = classifier_for(version, runtime=settings.CXR_INFERENCE_RUNTIME)
        try:
            with prediction.image.file.open("rb") as fh:
                image = open_image(fh)
        except (OSError, SyntaxError, ValueError) as exc:
            raise UnreadableImageError(
                f"The stored image could not be read ({type(exc).__name__}: {exc})."
            ) from exc
        # The lung fields go with the prediction; segment_lungs records its own
        # errors instead of raising, so it never fails the classification. A
        # model preprocessed with the same segmenter (v2) reuses them.
        self.lungs = segment_lungs(image)
        result = classifier.predict(
            image, lungs=lungs_for_classifier(classifier, self.lungs.result)
        )
        # The case's site may serve this version at an operating point of its own: the
        # label is then made from the same probabilities at that point (apps.sites).
        site_label, point = label_for(
            site_id=prediction.image.case.site_id,
            version=version,
            probabilities=result.probabilities,
        )
        # The drift monitor's features (apps.sites.drift): None, and nothing imported,
        # when the version has no drift reference; never fails the prediction.
        self.version_id = version.pk
        self.drift_features = drift_features_of(
            version=version,
            image=image,
            lungs=self.lungs.result,
            probabilities=result.probabilities,
        )
        return JobResult(
            fields={
                "model_version_id": version.pk,
                "label": site_label or result.label,
                "operating_point_id": point.pk if point else None,
                "probabilities": result.probabilities,
                "preprocess_ms": result.preprocess_ms,
                "inference_ms": result.inference_ms,
            }
        )

    def store(self, prediction: Prediction, stored: StoredFiles) -> dict[str, object]:
        fields = self.lungs.store(prediction, stored)
        record_drift(prediction, self.version_id, getattr(self, "drift_features", None))
        return fields

    def on_done(self, prediction: Prediction) -> None:
        # Every prediction gets a Grad-CAM, queued once this commits.
        from apps.explain.services import AUTOMATIC_METHOD, request_explanation

        request_explanation(image=prediction.image, method=AUTOMATIC_METHOD)

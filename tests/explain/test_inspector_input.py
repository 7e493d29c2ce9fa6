"""The model inspector's "input as the model sees it" is what the prediction job feeds
the model: for the bundled lung-masked classifier, the lung-masked crop."""

from __future__ import annotations

import numpy as np
import pytest
from django.conf import settings

from apps.cases import services as case_services
from apps.cases.models import Prediction
from apps.explain.inspector import request_inspection
from apps.explain.models import Inspection
from apps.models.services import register_artifact
from cxrplatform.jobs import run_job_now
from ml.data.preprocess import PreprocessSpec, open_image, preprocess
from ml.explain.api import grid_png
from ml.explain.render import display_image
from ml.serving.classifier import Classifier
from tests.conftest import upload_of

CXR_LUNGS = settings.BASE_DIR / "ml" / "bundled" / "cxr-lungs" / "cxr-lungs.keras"


@pytest.mark.slow
def test_the_inspectors_input_is_the_lung_masked_crop_the_prediction_feeds_the_model(
    clinician, model_admin, monkeypatch, django_capture_on_commit_callbacks
):
    import ml.explain.api

    version = register_artifact(artifact_path=CXR_LUNGS, make_production=True)
    spec = PreprocessSpec.from_dict(version.card["preprocessing"])
    assert spec.version == 2
    assert spec.mask_outside
    fed: list[np.ndarray] = []  # every batch any classifier is asked about, in order
    predict_array = Classifier.predict_array

    def recording(self, batch):
        fed.append(np.array(batch, copy=True))
        return predict_array(self, batch)

    monkeypatch.setattr(Classifier, "predict_array", recording)
    monkeypatch.setattr(ml.explain.api, "METHODS", ("gradcam",))  # the input is the point

    with django_capture_on_commit_callbacks(execute=False):
        case = case_services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.DONE, prediction.error
    assert prediction.model_version == version
    assert prediction.lungs_found is True
    assert len(fed) == 1
    predicted = fed[0][0]

    with django_capture_on_commit_callbacks(execute=False):
        inspection = request_inspection(user=model_admin, version=version, image=case.images.get())
    run_job_now(Inspection, inspection.pk)
    inspection.refresh_from_db()
    assert inspection.status == "done", inspection.error
    assert len(fed) == 2
    np.testing.assert_array_equal(fed[1][0], predicted)
    with inspection.pictures.get(kind="input").file.open("rb") as fh:
        assert fh.read() == grid_png(display_image(predicted)[0], scale=2)

    # Not the whole film letterboxed (what the inspector showed before): the crop to the
    # lung fields, blanked outside them.
    with case.images.get().file.open("rb") as fh:
        whole = preprocess(open_image(fh), spec)
    assert not np.array_equal(whole, predicted)
    assert 0.1 < float((predicted == 0).mean()) < 0.9

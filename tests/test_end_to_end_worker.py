"""A real Celery worker process classifies an upload.

Broker and database are whatever the test run uses: in CI, Redis and
PostgreSQL (``.ci/run`` sets ``CELERY_BROKER_URL`` and ``DATABASE_URL``);
on a bare machine, the filesystem broker and SQLite.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from apps.cases import services
from apps.cases.models import Prediction
from apps.explain.models import Explanation
from tests.conftest import upload_of


def _wait_until_finished(queryset, count, process, log_path, what):
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rows = list(queryset.all())
        if len(rows) == count and all(r.status in {"done", "failed"} for r in rows):
            return rows
        assert process.poll() is None, "worker exited:\n" + log_path.read_text()[-4000:]
        time.sleep(0.5)
    pytest.fail(f"{what} not finished within 180 s; worker log:\n{log_path.read_text()[-4000:]}")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_real_worker_classifies_an_uploaded_image_and_explains_it(
    clinician, production_model, worker
):
    process, log_path = worker
    case = services.create_case(
        owner=clinician, files=[upload_of("2168a917.jpg"), upload_of("00001280_004.jpg")]
    )
    predictions = Prediction.objects.filter(image__case=case)
    _wait_until_finished(predictions, 2, process, log_path, "predictions")

    for prediction in predictions.all():
        assert prediction.status == "done", prediction.error
        assert prediction.model_version_id == production_model.pk
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.label in {"covid19", "pneumonia", "normal"}

    # Each prediction queued a Grad-CAM on the explain queue; the worker ran it.
    explanations = Explanation.objects.filter(image__case=case)
    for explanation in _wait_until_finished(explanations, 2, process, log_path, "Grad-CAMs"):
        assert explanation.status == "done", explanation.error
        assert explanation.method == "gradcam"
        with explanation.heatmap.open("rb") as fh:
            heatmap = np.load(io.BytesIO(fh.read()))
        assert heatmap.shape == (128, 128)
        assert float(heatmap.max()) == pytest.approx(1.0)
        with explanation.overlay.open("rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    log = log_path.read_text()
    assert "Task cxrplatform.jobs.run_job:cases.prediction[" in log
    assert "Task cxrplatform.jobs.run_job:explain.explanation[" in log
    assert "succeeded" in log


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_real_worker_segments_an_uploaded_ct_slice_and_explains_it(
    clinician, production_model, ct_production_model, worker
):
    """A CT slice goes to the segmentation queue; the worker stores its masks and the
    share of the lung affected, then Grad-CAM of the infection output on explain."""
    from PIL import Image

    from apps.cases.models import CT_MASK_KINDS, Segmentation
    from tests.ct_uploads import MEDSEG_SLICE, ct_upload

    process, log_path = worker
    case = services.create_case(owner=clinician, files=[ct_upload(MEDSEG_SLICE)], modality="ct")
    segmentations = Segmentation.objects.filter(image__case=case)
    (segmentation,) = _wait_until_finished(segmentations, 1, process, log_path, "segmentation")
    assert segmentation.status == "done", segmentation.error
    assert segmentation.model_version_id == ct_production_model.pk
    image = case.images.get()
    for kind in CT_MASK_KINDS:
        with segmentation.mask_field(kind).open("rb") as fh:
            mask = np.asarray(Image.open(io.BytesIO(fh.read())))
        assert mask.shape == (image.height, image.width), kind
    assert segmentation.lung_area is not None
    assert segmentation.infection_area is not None
    if segmentation.lungs_found:
        assert 0.0 <= segmentation.percent_affected <= 100.0
    else:
        assert segmentation.message
    explanations = Explanation.objects.filter(image__case=case)
    (explanation,) = _wait_until_finished(explanations, 1, process, log_path, "Grad-CAM")
    assert explanation.status == "done", explanation.error
    assert explanation.target_label == "infection"
    log = log_path.read_text()
    assert "Task cxrplatform.jobs.run_job:cases.segmentation[" in log
    assert "Task cxrplatform.jobs.run_job:cases.prediction[" not in log  # no X-ray classification

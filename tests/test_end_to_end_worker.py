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
    assert "apps.cases.tasks.classify_image" in log
    assert "apps.explain.tasks.explain_image" in log
    assert "succeeded" in log

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from apps.cases import services
from apps.cases.models import Prediction
from apps.models.models import ModelVersion
from cxrplatform.jobs import run_job, run_job_now, sweep_stuck
from ml.data.labels import CLASSES
from tests.conftest import fixture_manifest, upload_of


@pytest.fixture
def pending(clinician, django_capture_on_commit_callbacks):
    def _make(name="2168a917.jpg"):
        with django_capture_on_commit_callbacks(execute=False):
            case = services.create_case(owner=clinician, files=[upload_of(name)])
        return Prediction.objects.get(image__case=case)

    return _make


def test_classify_task_stores_probabilities_that_sum_to_one_and_the_model_version(
    pending, production_model
):
    prediction = pending()
    run_job.run(job="cases.prediction", pk=prediction.pk)  # the task body, in-process
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.DONE
    assert prediction.model_version == production_model
    assert set(prediction.probabilities) == set(CLASSES)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= p <= 1.0 for p in prediction.probabilities.values())
    assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.get)
    assert prediction.inference_ms > 0
    assert prediction.attempts == 1
    assert prediction.started_at <= prediction.finished_at


@pytest.mark.slow
def test_bundled_model_classifies_its_fixture_images_mostly_right(pending, production_model):
    """The tiny bootstrap model was fitted on these 18 images: a plumbing check
    that the serving path feeds the model what training fed it (a preprocessing
    mismatch drops this to chance, about 1/3)."""
    rows = fixture_manifest()
    correct = 0
    for row in rows:
        prediction = pending(row["path"])
        run_job_now(Prediction, prediction.pk)
        prediction.refresh_from_db()
        correct += prediction.label == row["label"]
    assert correct / len(rows) >= 0.8


def test_redelivered_task_for_a_finished_prediction_changes_nothing(pending, production_model):
    prediction = pending()
    run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    finished_at = prediction.finished_at
    run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.attempts == 1
    assert prediction.finished_at == finished_at


def test_prediction_left_running_by_a_killed_worker_runs_again(pending, production_model):
    prediction = pending()
    prediction.mark_running()  # the worker died here; the broker redelivers
    run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.DONE
    assert prediction.attempts == 2


def test_without_a_production_model_the_failure_is_recorded_on_the_row(pending):
    prediction = pending()
    run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.FAILED
    assert "No production model is registered" in prediction.error
    assert prediction.finished_at is not None


def test_unreadable_stored_image_fails_the_prediction_with_the_reason(pending, production_model):
    prediction = pending()
    image = prediction.image
    image.file.storage.delete(image.file.name)
    image.file.storage.save(image.file.name, ContentFile(b"not an image any more"))
    run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.FAILED
    assert "UnidentifiedImageError" in prediction.error


def test_tampered_model_artifact_is_refused(pending, production_model):
    ModelVersion.objects.filter(pk=production_model.pk).update(sha256="0" * 64)
    prediction = pending()
    run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.FAILED
    assert "ArtifactIntegrityError" in prediction.error
    assert "0000000000" in prediction.error


def test_sweeper_fails_predictions_stuck_running_past_the_hard_limit(pending, settings):
    stuck, fresh = pending(), pending("5f619d7e.jpg")
    stuck.mark_running()
    fresh.mark_running()
    Prediction.objects.filter(pk=stuck.pk).update(
        started_at=timezone.now()
        - timedelta(seconds=settings.CXR_TASK_HARD_LIMITS["inference"] + 120)
    )
    assert sweep_stuck(Prediction) == {"failed": 1, "requeued": 0}
    stuck.refresh_from_db()
    fresh.refresh_from_db()
    assert stuck.status == Prediction.Status.FAILED
    assert "time limit" in stuck.error
    assert fresh.status == Prediction.Status.RUNNING


def test_sweeper_requeues_pending_predictions_that_never_reached_a_worker(
    pending, django_capture_on_commit_callbacks
):
    lost = pending()
    Prediction.objects.filter(pk=lost.pk).update(queued_at=timezone.now() - timedelta(hours=1))
    pending("5f619d7e.jpg")  # recent: still in the queue, leave it alone
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = sweep_stuck(Prediction)
    assert result == {"failed": 0, "requeued": 1}
    assert len(callbacks) == 1

"""The one rule for "the result of this image" (apps.cases.models.current_job): the
newest DONE job by finished_at then pk, else the newest job by pk. A retried job keeps
its pk, so an older row can hold the newer result: the page, its mask layers, the files
its view names, the explained model and a retry of the image then all name that row."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from apps.cases import page_files
from apps.cases.models import Modality, Prediction, Segmentation, current_job, newest_result
from apps.explain.models import Explanation
from apps.explain.services import request_explanation
from apps.models.models import Task
from cxrplatform.jobs import retry_job
from tests.ct_uploads import png_bytes
from tests.factories import CaseFactory, CaseImageFactory, ModelVersionFactory, PredictionFactory

NOW = timezone.now()


def _job(pk: int, status: str, finished_minutes: float | None = None) -> Prediction:
    finished = None if finished_minutes is None else NOW + timedelta(minutes=finished_minutes)
    return Prediction(pk=pk, status=status, finished_at=finished)


def test_the_newest_finished_result_speaks_for_the_image():
    older_row_newer_result = _job(1, "done", finished_minutes=5)
    newer_row_older_result = _job(2, "done", finished_minutes=1)
    pending = _job(3, "pending")
    assert current_job([older_row_newer_result, newer_row_older_result, pending]) == (
        older_row_newer_result
    )
    # The same finishing time: the newer row.
    tie = _job(4, "done", finished_minutes=5)
    assert current_job([older_row_newer_result, tie]) == tie
    # A done row without a finishing time ranks below every timed one.
    assert current_job([_job(9, "done"), newer_row_older_result]) == newer_row_older_result


def test_without_a_result_the_newest_job_of_any_status_is_shown():
    failed, running = _job(1, "failed", finished_minutes=9), _job(2, "running")
    assert current_job([failed, running]) == running
    assert newest_result([failed, running]) is None
    assert current_job([]) is None
    assert newest_result([_job(1, "done", 0), failed]) == _job(1, "done", 0)


def _mask(full: bool) -> ContentFile:
    return ContentFile(png_bytes(np.full((32, 32), 255 if full else 0, np.uint8)), "m.png")


def _segmented(segmentation: Segmentation, version, *, percent: float, full: bool) -> None:
    """What the segmentation worker leaves: its masks and figures, marked done now."""
    for field in ("lung_mask", "ggo_mask", "consolidation_mask", "infection_mask"):
        getattr(segmentation, field).save("m.png", _mask(full or field == "lung_mask"), False)
    segmentation.lung_outline.save("m.png", _mask(False), save=False)
    segmentation.mark_running()
    segmentation.mark_done(
        model_version=version,
        lungs_found=True,
        percent_affected=percent,
        lung_mask=segmentation.lung_mask.name,
        ggo_mask=segmentation.ggo_mask.name,
        consolidation_mask=segmentation.consolidation_mask.name,
        infection_mask=segmentation.infection_mask.name,
        lung_outline=segmentation.lung_outline.name,
    )


@pytest.mark.django_db
def test_a_retried_ct_segmentation_that_finished_last_is_the_slices_result(login, clinician):
    """Slice with two segmentations: the first failed, the second (by another model)
    finished, then the first was retried and finished after it. Before the one rule the
    page and its mask layers showed the second (the highest pk; the newest done by pk)
    while the Grad-CAM explained the first's model (the newest done by finishing time)."""
    image = CaseImageFactory(case=CaseFactory(owner=clinician, modality=Modality.CT))
    first_model = ModelVersionFactory(task=Task.CT_SEGMENTATION)
    second_model = ModelVersionFactory(task=Task.CT_SEGMENTATION)
    first = Segmentation.objects.create(image=image)
    first.mark_running()
    first.mark_failed("No result within the time limit: the worker stopped.")
    second = Segmentation.objects.create(image=image)
    _segmented(second, second_model, percent=10.0, full=False)
    retry_job(first, actor=clinician)
    first.refresh_from_db()
    _segmented(first, first_model, percent=40.0, full=True)
    assert first.pk < second.pk
    assert first.finished_at is not None
    assert second.finished_at is not None
    assert first.finished_at > second.finished_at

    assert current_job(image.segmentations.all()) == first
    client = login(clinician)
    html = client.get(reverse("cases:detail", args=[image.case_id])).content.decode()
    assert 'data-percent-affected="40.0"' in html
    assert 'data-percent-affected="10.0"' not in html
    # The layer drawn over the slice is the first's mask (all ground glass), and the page
    # view names that segmentation's layers.
    layer = client.get(reverse("cases:ct-layer", args=[image.pk, "ggo"]))
    with Image.open(io.BytesIO(layer.content)) as png:
        alpha = np.asarray(png)[..., 3]
    assert (alpha == 255).all()
    files = page_files.case_files(image.case)
    assert {f.target for f in files if f.kind == "ct_layer"} == {first}
    # Its Grad-CAM explains the model that made the result shown.
    explanation = request_explanation(image=image, method=Explanation.Method.GRADCAM)
    assert explanation.model_version == first_model


@pytest.mark.django_db
def test_a_retried_classification_that_finished_last_is_the_images_result(login, clinician):
    image = CaseImageFactory(case=CaseFactory(owner=clinician))
    first = PredictionFactory(image=image, pending=True)
    first.mark_running()
    first.mark_failed("No result within the time limit: the worker stopped.")
    second = PredictionFactory(
        image=image, probabilities={"covid19": 0.1, "pneumonia": 0.8, "normal": 0.1}
    )
    retry_job(first, actor=clinician)
    first.refresh_from_db()
    first_model = ModelVersionFactory()
    first.mark_running()
    first.mark_done(
        model_version=first_model,
        label="covid19",
        probabilities={"covid19": 0.9, "pneumonia": 0.05, "normal": 0.05},
    )

    assert image.latest_prediction == first
    client = login(clinician)
    html = client.get(reverse("cases:detail", args=[image.case_id])).content.decode()
    assert 'data-label="covid19"' in html
    assert 'data-label="pneumonia"' not in html
    explanation = request_explanation(image=image, method=Explanation.Method.GRADCAM)
    assert explanation.model_version == first_model
    assert explanation.model_version != second.model_version
    # A retry of the image names the job its page shows: done, so there is nothing to retry.
    response = client.post(reverse("cases:prediction-retry", args=[image.pk]), follow=True)
    assert "Only a failed prediction can be retried; this one is done." in (
        response.content.decode()
    )
    second.refresh_from_db()
    assert second.status == "done"


@pytest.mark.django_db
def test_the_current_explanation_per_method_follows_the_same_rule():
    image = CaseImageFactory()
    retried = Explanation.objects.create(
        image=image, method="gradcam", model_version=ModelVersionFactory()
    )
    retried.mark_running()
    retried.mark_failed("The worker stopped.")
    newer = Explanation.objects.create(
        image=image, method="gradcam", model_version=ModelVersionFactory()
    )
    newer.mark_running()
    newer.mark_done()
    retry_job(retried)
    retried.refresh_from_db()
    assert [e.pk for e in image.current_explanations] == [newer.pk]  # done beats pending
    retried.mark_running()
    retried.mark_done()
    assert [e.pk for e in image.current_explanations] == [retried.pk]

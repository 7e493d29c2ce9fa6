import io

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from apps.cases import services as case_services
from apps.cases.models import Prediction
from apps.explain import services
from apps.explain.models import Explanation
from cxrplatform.jobs import run_job_now
from tests.conftest import upload_of


@pytest.fixture
def predicted_image(clinician, production_model, django_capture_on_commit_callbacks):
    """An uploaded image whose prediction has run (the automatic Grad-CAM is queued)."""
    with django_capture_on_commit_callbacks(execute=False):
        case = case_services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run_job_now(Prediction, prediction.pk)
    assert len(callbacks) == 1  # the Grad-CAM job, queued after commit
    return prediction.image


def test_every_prediction_queues_a_gradcam_for_the_model_that_made_it(predicted_image):
    explanation = Explanation.objects.get(image=predicted_image)
    assert explanation.method == "gradcam"
    assert explanation.status == "pending"
    assert explanation.requested_by is None
    prediction = predicted_image.predictions.get()
    assert explanation.model_version_id == prediction.model_version_id


@pytest.mark.slow
def test_gradcam_job_stores_a_readable_raw_map_an_overlay_and_scores(predicted_image):
    explanation = Explanation.objects.get(image=predicted_image)
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    assert explanation.status == "done", explanation.error
    with explanation.heatmap.open("rb") as fh:
        values = np.load(io.BytesIO(fh.read()))
    size = predicted_image.predictions.get().model_version.card["preprocessing"]["input_size"]
    assert values.shape == (size, size)
    assert values.dtype == np.float32
    assert np.isfinite(values).all()
    assert values.min() >= 0.0
    assert values.max() == pytest.approx(1.0)
    with explanation.overlay.open("rb") as fh:
        overlay = Image.open(io.BytesIO(fh.read()))
        overlay.load()
    assert overlay.format == "PNG"
    assert overlay.width > size  # the image plus a colour bar
    assert 0.0 <= explanation.scores["deletion_auc"] <= 1.0
    assert 0.0 <= explanation.scores["insertion_auc"] <= 1.0
    assert explanation.layer == "last_conv"
    assert explanation.target_label == predicted_image.predictions.get().label
    assert explanation.params["guided"] is False  # standard Grad-CAM, not guided
    assert explanation.seconds is not None
    assert explanation.seconds > 0


def test_running_a_finished_job_again_changes_nothing(predicted_image):
    explanation = Explanation.objects.get(image=predicted_image)
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    heatmap_name = explanation.heatmap.name
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    assert explanation.attempts == 1
    assert explanation.heatmap.name == heatmap_name


def test_asking_twice_for_a_method_returns_the_same_job(
    predicted_image, clinician, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = services.request_explanation(
            image=predicted_image, method="occlusion", requested_by=clinician
        )
        second = services.request_explanation(
            image=predicted_image, method="occlusion", requested_by=clinician
        )
    assert first.pk == second.pk
    assert len(callbacks) == 1


def test_a_failed_job_can_be_asked_for_again(predicted_image, django_capture_on_commit_callbacks):
    explanation = Explanation.objects.get(image=predicted_image)
    explanation.mark_failed("worker lost")
    with django_capture_on_commit_callbacks(execute=False):
        retry = services.request_explanation(image=predicted_image, method="gradcam")
    assert retry.pk != explanation.pk
    assert retry.status == "pending"


def test_unknown_method_and_unpredicted_image_are_refused(
    clinician, predicted_image, django_capture_on_commit_callbacks
):
    with pytest.raises(services.ExplanationUnavailable, match="Unknown explanation method 'lime'"):
        services.request_explanation(image=predicted_image, method="lime")
    with django_capture_on_commit_callbacks(execute=False):
        case = case_services.create_case(owner=clinician, files=[upload_of("5f619d7e.jpg")])
    with pytest.raises(services.ExplanationUnavailable, match="no finished prediction yet"):
        services.request_explanation(image=case.images.get(), method="gradcam")


def test_job_failure_is_recorded_with_its_reason(predicted_image):
    explanation = Explanation.objects.get(image=predicted_image)
    storage = predicted_image.file.storage
    storage.delete(predicted_image.file.name)
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    assert explanation.status == "failed"
    assert "FileNotFoundError" in explanation.error
    assert not explanation.heatmap
    assert not explanation.overlay


@pytest.mark.parametrize(
    ("who", "expected"),
    [("owner", 200), ("other_clinician", 404), ("annotator", 403), ("anonymous", 302)],
)
@pytest.mark.slow
def test_heatmap_files_by_id_are_served_only_to_the_owner(
    client, who, expected, predicted_image, clinician, other_clinician, annotator
):
    explanation = Explanation.objects.get(image=predicted_image)
    run_job_now(Explanation, explanation.pk)
    users = {"owner": clinician, "other_clinician": other_clinician, "annotator": annotator}
    if who != "anonymous":
        client.force_login(users[who])
    for name in ("explain:overlay", "explain:heatmap"):
        response = client.get(reverse(name, args=[explanation.pk]))
        assert response.status_code == expected, name
    if who == "owner":
        response = client.get(reverse("explain:overlay", args=[explanation.pk]))
        assert response["Content-Type"] == "image/png"
        assert b"".join(response.streaming_content).startswith(b"\x89PNG")


@pytest.mark.slow
def test_case_page_shows_the_overlay_and_offers_other_methods(
    login, clinician, predicted_image, django_capture_on_commit_callbacks
):
    explanation = Explanation.objects.get(image=predicted_image)
    run_job_now(Explanation, explanation.pk)
    client = login(clinician)
    page = client.get(reverse("cases:detail", args=[predicted_image.case_id])).content.decode()
    assert reverse("explain:overlay", args=[explanation.pk]) in page
    assert reverse("explain:layer", args=[explanation.pk]) in page
    assert '<option value="occlusion">' in page
    assert "data-live-pending" not in page  # everything finished: stop polling
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            reverse("explain:request", args=[predicted_image.pk]), {"method": "occlusion"}
        )
    assert response.status_code == 302
    assert len(callbacks) == 1
    assert Explanation.objects.filter(image=predicted_image, method="occlusion").exists()
    page = client.get(reverse("cases:detail", args=[predicted_image.case_id])).content.decode()
    assert 'data-method="occlusion" data-status="pending"' in page
    assert page.count("data-live-pending") == 1  # the image, until its occlusion map is done

    # The viewer's script asks for JSON: 202 while queued, 200 once it exists.
    response = client.post(
        reverse("explain:request", args=[predicted_image.pk]),
        {"method": "occlusion"},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    response = client.post(
        reverse("explain:request", args=[predicted_image.pk]),
        {"method": "gradcam"},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 200
    assert response.json()["id"] == explanation.pk
    response = client.post(
        reverse("explain:request", args=[predicted_image.pk]),
        {"method": "astrology"},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 400
    assert "Unknown explanation method 'astrology'" in response.json()["error"]


@pytest.mark.slow
def test_heatmap_layer_is_the_coloured_map_for_allowed_users_only(
    login, clinician, other_clinician, predicted_image
):
    import io

    import numpy as np
    from PIL import Image

    explanation = Explanation.objects.get(image=predicted_image)
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    url = reverse("explain:layer", args=[explanation.pk])
    response = login(clinician).get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    layer = Image.open(io.BytesIO(response.content))
    heatmap = np.load(explanation.heatmap.open("rb"), allow_pickle=False)
    assert layer.mode == "RGBA"
    assert layer.size == (heatmap.shape[1], heatmap.shape[0])
    # jet: the hottest pixel is red-ish, the coldest blue-ish
    pixels = np.asarray(layer)
    hot = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    cold = np.unravel_index(np.argmin(heatmap), heatmap.shape)
    assert pixels[hot][0] > pixels[hot][2]
    assert pixels[cold][2] > pixels[cold][0]
    assert login(other_clinician).get(url).status_code == 404


def test_other_clinician_cannot_request_explanations_for_my_image(
    login, other_clinician, predicted_image
):
    response = login(other_clinician).post(
        reverse("explain:request", args=[predicted_image.pk]), {"method": "occlusion"}
    )
    assert response.status_code == 404
    assert not Explanation.objects.filter(method="occlusion").exists()

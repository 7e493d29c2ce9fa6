"""The model inspector: model admins only, a job run in-process that stores real PNGs
from the tiny test model, and the page's pending / done / failed states."""

import hashlib
import io

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from PIL import Image

from apps.accounts.models import AuditEvent
from apps.explain.models import Inspection
from apps.models.models import ReferenceImage
from cxrplatform.jobs import run_job, run_job_now
from ml.explain.api import METHODS
from tests.conftest import IMAGES


@pytest.fixture
def reference_image(db):
    content = (IMAGES / "IM-0117-0001.jpeg").read_bytes()
    image = ReferenceImage(
        sha256=hashlib.sha256(content).hexdigest(),
        label="normal",
        patient="ped-IM-0117",
        source="pediatric-pneumonia",
        original_name="IM-0117-0001.jpeg",
    )
    image.file.save("IM-0117-0001.jpeg", ContentFile(content), save=False)
    image.save()
    return image


@pytest.fixture
def requested(
    login, model_admin, production_model, reference_image, django_capture_on_commit_callbacks
):
    client = login(model_admin)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            reverse("registry:inspector"),
            {"version": production_model.pk, "image": f"ref-{reference_image.pk}", "layer": ""},
        )
    assert response.status_code == 302
    assert len(callbacks) == 1  # the task is queued only after commit
    inspection = Inspection.objects.get()
    assert response["Location"] == reverse("registry:inspection", args=[inspection.pk])
    return client, inspection


@pytest.mark.parametrize("role", ["clinician", "annotator"])
def test_only_model_admins_reach_the_inspector(request, login, role, production_model):
    client = login(request.getfixturevalue(role))
    assert client.get(reverse("registry:inspector")).status_code == 403
    assert client.post(reverse("registry:inspector"), {}).status_code == 403
    assert client.get(reverse("registry:inspection", args=[1])).status_code == 403
    assert client.get(reverse("registry:inspection-picture", args=[1])).status_code == 403


def test_anonymous_users_are_sent_to_log_in(client):
    response = client.get(reverse("registry:inspector"))
    assert response.status_code == 302
    assert "login" in response["Location"]


def test_form_lists_versions_and_images_without_patient_references(
    login, model_admin, production_model, reference_image
):
    page = login(model_admin).get(reverse("registry:inspector")).content.decode()
    assert f"#{production_model.pk} {production_model.name}" in page
    assert f'value="ref-{reference_image.pk}"' in page
    assert "IM-0117-0001.jpeg" in page
    assert "ped-IM-0117" not in page  # the patient reference is never shown


def test_invalid_choices_are_refused(login, model_admin, production_model):
    response = login(model_admin).post(
        reverse("registry:inspector"), {"version": production_model.pk, "image": "ref-999"}
    )
    assert response.status_code == 400
    assert "Choose an image." in response.content.decode()
    assert not Inspection.objects.exists()


def test_pending_page_shows_a_spinner_and_asks_for_live_updates(requested):
    client, inspection = requested
    page = client.get(reverse("registry:inspection", args=[inspection.pk])).content.decode()
    assert 'data-live="inspection"' in page
    assert "data-live-pending" in page
    assert 'class="spinner"' in page
    assert AuditEvent.objects.filter(action="inspection.requested").count() == 1


@pytest.mark.slow
def test_job_stores_filters_activations_and_every_method_as_png(requested, production_model):
    client, inspection = requested
    run_job.run(job="explain.inspection", pk=inspection.pk)  # the task body, in-process
    inspection.refresh_from_db()
    assert inspection.status == "done", inspection.error
    assert inspection.layer == "last_conv"
    assert "relu2" in inspection.layers
    kinds = list(inspection.pictures.values_list("kind", flat=True))
    assert kinds == ["input", "filters", "activations", *METHODS]
    for picture in inspection.pictures.all():
        with picture.file.open("rb") as fh:
            image = Image.open(io.BytesIO(fh.read()))
            image.load()
        assert image.format == "PNG"
        assert min(image.size) >= 20
    gradcam = inspection.pictures.get(kind="gradcam")
    assert 0.0 <= gradcam.scores["deletion_auc"] <= 1.0
    # Deconvolution sits beside the other methods, with its faithfulness scores.
    deconvnet = inspection.pictures.get(kind="deconvnet")
    assert deconvnet.title.startswith("Deconvolution: ")
    assert 0.0 <= deconvnet.scores["insertion_auc"] <= 1.0
    assert abs(sum(inspection.results["probabilities"].values()) - 1.0) < 1e-4
    production_model.refresh_from_db()
    assert production_model.card["inspector_layers"] == inspection.layers

    page = client.get(reverse("registry:inspection", args=[inspection.pk])).content.decode()
    assert "data-live-pending" not in page
    assert page.count(reverse("registry:inspection-picture", args=[gradcam.pk])) == 1
    assert reverse("registry:inspection-picture", args=[deconvnet.pk]) in page
    assert f"{deconvnet.title} · deletion AUC" in page
    served = client.get(reverse("registry:inspection-picture", args=[gradcam.pk]))
    assert served.status_code == 200
    assert served["Content-Type"] == "image/png"
    assert served["Cache-Control"] == "private, no-store"
    # The form now offers the version's layers.
    form = client.get(reverse("registry:inspector")).content.decode()
    assert '<option value="relu2">relu2</option>' in form
    # Running it again changes nothing.
    done = run_job_now(Inspection, inspection.pk)
    assert done is not None
    assert done.pictures.count() == len(kinds)


@pytest.mark.slow
def test_a_chosen_layer_is_used_and_a_bad_one_fails_with_its_reason(
    login, model_admin, production_model, reference_image
):
    from apps.explain.inspector import request_inspection

    good = request_inspection(
        user=model_admin, version=production_model, image=reference_image, layer="relu1"
    )
    bad = request_inspection(
        user=model_admin, version=production_model, image=reference_image, layer="nope"
    )
    run_job_now(Inspection, good.pk)
    run_job_now(Inspection, bad.pk)
    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.status == "done"
    assert "relu1" in good.pictures.get(kind="activations").title
    assert bad.status == "failed"
    assert "nope" in bad.error
    page = login(model_admin).get(reverse("registry:inspection", args=[bad.pk])).content.decode()
    assert "The inspection failed" in page
    assert "data-live-pending" not in page

"""One provenance record per image, on the web and in the API: the
whole chain for one DICOM image, from the upload to the snapshot that trains on it."""

from __future__ import annotations

import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient

from apps.cases import labelling, services
from apps.cases.models import Prediction
from apps.explain.models import Explanation
from apps.models.datasets import create_snapshot, import_reference_dataset
from cxrplatform.jobs import run_job_now
from tests.cases.test_input_safety import make_dicom
from tests.conftest import IMAGES
from tests.factories import UserFactory


@pytest.fixture
def chain(production_model, clinician, settings):
    """A DICOM upload, its prediction and Grad-CAM, two readers who disagree, the
    adjudicator's decision, and a snapshot."""
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "adjudication", 1
    upload = SimpleUploadedFile(
        "chest.dcm", make_dicom(name="IM-0133-0001.jpeg"), content_type="application/dicom"
    )
    case = services.create_case(owner=clinician, files=[upload])
    image = case.images.get()
    prediction = Prediction.objects.get(image=image)
    run_job_now(Prediction, prediction.pk)
    explanation = Explanation.objects.get(image=image, method="gradcam")
    run_job_now(Explanation, explanation.pk)
    first = UserFactory(username="reader-one", roles=["annotator"])
    second = UserFactory(username="reader-two", roles=["annotator"])
    adjudicator = UserFactory(username="senior", roles=["adjudicator"])
    labelling.submit_label(image=image, annotator=first, label="normal", note="clear")
    labelling.submit_label(image=image, annotator=second, label="pneumonia", note="RLL haze")
    labelling.adjudicate(image=image, adjudicator=adjudicator, label="pneumonia", note="agree B")
    import_reference_dataset(IMAGES / "manifest.csv", "generic")
    snapshot = create_snapshot()
    image.refresh_from_db()
    prediction.refresh_from_db()
    explanation.refresh_from_db()
    return image, prediction, explanation, snapshot, production_model


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.slow
def test_provenance_follows_one_dicom_image_from_upload_to_snapshot(chain, model_admin):
    image, prediction, explanation, snapshot, production = chain
    response = _api(model_admin).get(f"/api/v1/images/{image.pk}/provenance/")
    assert response.status_code == 200, response.content
    p = response.json()

    # The upload: the stored PNG's hash, the de-identified DICOM's, upload time and role.
    stored = hashlib.sha256(image.file.read()).hexdigest()
    original = hashlib.sha256(image.original.read()).hexdigest()
    assert p["image"]["file_sha256"] == stored
    assert p["image"]["original_sha256"] == original == image.sha256
    assert p["image"]["matches_upload"] is True
    assert p["image"]["source_format"] == "dicom"
    assert p["image"]["uploaded_by_role"] == "clinician"
    assert p["image"]["uploaded_at"][:19] == image.created_at.isoformat()[:19]

    # The prediction, with the model version and preprocessing that made it.
    [predicted] = p["predictions"]
    assert predicted["id"] == prediction.pk
    assert predicted["label"] == prediction.label
    assert predicted["model_version"] == {
        "id": production.pk,
        "name": production.name,
        "sha256": production.sha256,
    }
    pre = production.card["preprocessing"]
    assert predicted["preprocessing"]["version"] == pre.get("version", 1)
    assert predicted["preprocessing"]["input_size"] == pre["input_size"]

    # The explanation, with method, parameters and the explainer that computed it.
    [explained] = p["explanations"]
    assert (explained["id"], explained["method"], explained["status"]) == (
        explanation.pk,
        "gradcam",
        "done",
    )
    assert explained["params"]
    assert explained["params"] == explanation.params
    assert "tf-explain" in explained["explainer_version"]
    assert explained["explainer_version"] == explanation.explainer_version

    # Each reader's verdict (whether it has a note, never the note's text), the
    # adjudication and the confirmed label.
    label = p["label"]
    assert [(v["reader"], v["label"], v["has_note"]) for v in label["verdicts"]] == [
        ("reader-one", "normal", True),
        ("reader-two", "pneumonia", True),
    ]
    assert label["adjudication"]["adjudicator"] == "senior"
    assert label["adjudication"]["label"] == "pneumonia"
    assert label["adjudication"]["has_note"] is True
    for note in ("clear", "RLL haze", "agree B"):
        assert f'"{note}"' not in response.content.decode()
    assert (label["confirmed_label"], label["decided_by"], label["policy"]) == (
        "pneumonia",
        "adjudication",
        "adjudication",
    )
    assert [e["action"] for e in p["label_history"]] == [
        "label.create",
        "label.create",
        "label.adjudicate",
    ]
    # ... and the training set that holds it, with that label.
    [held] = p["snapshots"]
    assert (held["snapshot"], held["label"], held["split"]) == (snapshot.pk, "pneumonia", "train")
    # No patient reference (the DICOM's pseudonym is the case's patient_ref).
    assert image.case.patient_ref
    assert image.case.patient_ref not in response.content.decode()


@pytest.mark.slow
def test_provenance_page_shows_the_same_chain(chain, model_admin, login):
    image, _, explanation, snapshot, production = chain
    page = login(model_admin).get(reverse("registry:image-provenance", args=[image.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert hashlib.sha256(image.original.read()).hexdigest() in html
    assert production.sha256[:12] in html
    assert explanation.explainer_version in html
    assert "senior" in html
    for note in ("RLL haze", "agree B"):  # the readers' notes stay on their pages
        assert note not in html
    assert reverse("registry:snapshot", args=[snapshot.pk]) in html
    assert image.case.patient_ref not in html


@pytest.mark.parametrize("role", ["clinician", "annotator", "adjudicator"])
@pytest.mark.slow
def test_only_model_admins_see_provenance(chain, role, login):
    image = chain[0]
    user = UserFactory(roles=[role]) if role != "clinician" else image.case.owner
    assert login(user).get(reverse("registry:image-provenance", args=[image.pk])).status_code == 403

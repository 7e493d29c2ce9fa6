"""Behaviour of the REST API: the services behind it, status codes, error bodies,
filters, pagination, throttles and protected files."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.utils import timezone
from knox.models import AuthToken
from PIL import Image
from rest_framework.test import APIClient

from apps.accounts.models import AuditEvent
from apps.cases.access import image_ref
from apps.cases.models import Case, CaseImage, Prediction
from apps.explain.models import Explanation
from apps.models.datasets import import_reference_dataset
from apps.models.models import ModelVersion, TrainingRun
from cxrplatform.jobs import run_job_now
from tests.api.conftest import predicted_case
from tests.conftest import IMAGES, REPO_ROOT, stored_files, upload_of
from tests.factories import PASSWORD, ExplanationFactory, UserFactory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _error(response, status):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"status", "code", "message", "fields"}
    assert body["error"]["status"] == status
    return body["error"]


def _content(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


# -- tokens -------------------------------------------------------------------


def test_token_is_obtained_used_revoked_and_then_refused(clinician):
    client = APIClient()
    response = client.post(
        "/api/v1/auth/token/", {"username": "dr-a", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200
    key = response.json()["token"]
    assert AuthToken.objects.get(user=clinician).token_key == key[:15]  # only a digest kept

    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/cases/").status_code == 200
    assert client.delete("/api/v1/auth/token/").status_code == 204
    assert not AuthToken.objects.filter(user=clinician).exists()
    error = _error(client.get("/api/v1/cases/"), 401)
    assert error["message"] == "Invalid token."

    client.credentials()
    again = client.post("/api/v1/auth/token/", {"username": "dr-a", "password": PASSWORD})
    assert again.status_code == 200
    assert again.json()["token"] != key


def test_token_endpoint_accepts_a_form_and_refuses_wrong_or_missing_credentials(clinician):
    client = APIClient()
    ok = client.post(
        "/api/v1/auth/token/", {"username": "dr-a", "password": PASSWORD}, format="multipart"
    )
    assert ok.status_code == 415  # multipart is not a token request's media type
    ok = client.post(
        "/api/v1/auth/token/",
        "username=dr-a&password=" + PASSWORD,
        content_type="application/x-www-form-urlencoded",
    )
    assert ok.status_code == 200
    wrong = _error(
        client.post("/api/v1/auth/token/", {"username": "dr-a", "password": "nope"}), 400
    )
    assert wrong["message"] == "Unable to log in with these credentials."
    missing = _error(client.post("/api/v1/auth/token/", {"username": "dr-a"}), 400)
    assert missing["fields"] == {"password": ["This field is required."]}
    assert missing["code"] == "invalid"


def test_inactive_user_gets_no_token(db):
    UserFactory(username="gone", roles=["clinician"], is_active=False)
    response = APIClient().post("/api/v1/auth/token/", {"username": "gone", "password": PASSWORD})
    _error(response, 400)


def test_token_endpoint_is_throttled_per_address(settings, clinician):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"auth": "3/minute", "login": "3/minute"},
    }
    client = APIClient()
    for password in ("wrong", "wrong", PASSWORD):
        response = client.post("/api/v1/auth/token/", {"username": "dr-a", "password": password})
        assert response.status_code in {200, 400}
    blocked = client.post("/api/v1/auth/token/", {"username": "dr-a", "password": PASSWORD})
    error = _error(blocked, 429)
    assert error["code"] == "throttled"
    assert 0 < int(blocked["Retry-After"]) <= 60
    # Another address still gets through.
    other = client.post(
        "/api/v1/auth/token/",
        {"username": "dr-a", "password": PASSWORD},
        REMOTE_ADDR="10.1.2.3",
    )
    assert other.status_code == 200
    # Other API endpoints are not throttled by it.
    token = other.json()["token"]
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/cases/").status_code == 200


def test_web_login_posts_are_throttled_per_address(settings, client, clinician):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"auth": "3/minute", "login": "2/minute"},
    }
    for _ in range(2):
        response = client.post("/login/", {"username": "dr-a", "password": "wrong"})
        assert response.status_code == 200  # the form again, with its error
    blocked = client.post("/login/", {"username": "dr-a", "password": PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked["Retry-After"]) > 0
    assert "Too many log-in attempts" in blocked.content.decode()
    assert "_auth_user_id" not in client.session
    assert client.get("/login/").status_code == 200  # showing the form is not counted


def test_session_authentication_works_and_unsafe_requests_need_csrf(clinician, production_model):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(clinician)
    assert client.get("/api/v1/cases/").status_code == 200
    refused = client.post("/api/v1/images/1/explanations/", {"method": "gradcam"})
    assert _error(refused, 403)["message"].startswith("CSRF Failed")


# -- cases: one create path -----------------------------------------------------


@pytest.mark.slow
def test_clinician_creates_a_case_and_follows_it_to_prediction_and_gradcam(
    api_as, clinician, production_model, django_capture_on_commit_callbacks
):
    client = api_as("clinician")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            "/api/v1/cases/",
            {
                "images": [upload_of("2168a917.jpg"), upload_of("IM-0117-0001.jpeg")],
                "patient_ref": " P-77 ",
                "notes": "cough",
            },
            format="multipart",
        )
    assert response.status_code == 201, response.content
    body = response.json()
    case = Case.objects.get(owner=clinician)
    assert body["id"] == case.pk
    assert response["Location"] == f"http://testserver/api/v1/cases/{case.pk}/"
    assert body["status"] == "processing"
    assert body["patient_ref"] == "P-77"  # stripped by the service, as for the web form
    assert len(body["images"]) == 2
    assert len(callbacks) == 2  # one classification queued per image, after commit
    for image in body["images"]:
        assert image["prediction"]["status"] == "pending"
        assert image["prediction"]["probabilities"] is None
        assert image["prediction"]["label"] is None

    for prediction in Prediction.objects.filter(image__case=case):
        run_job_now(Prediction, prediction.pk)
    body = client.get(f"/api/v1/cases/{case.pk}/").json()
    assert body["status"] == "done"
    for image in body["images"]:
        prediction = image["prediction"]
        assert prediction["status"] == "done"
        assert set(prediction["probabilities"]) == {"covid19", "pneumonia", "normal"}
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction["label"] == max(
            prediction["probabilities"], key=prediction["probabilities"].get
        )
        assert prediction["model_version"]["id"] == production_model.pk
        assert prediction["model_version"]["sha256"] == production_model.sha256
        [gradcam] = image["explanations"]
        assert (gradcam["method"], gradcam["status"]) == ("gradcam", "pending")
        assert gradcam["overlay_url"] is None

    first = body["images"][0]
    run_job_now(Explanation, first["explanations"][0]["id"])
    image = client.get(f"/api/v1/images/{first['id']}/").json()
    gradcam = image["explanations"][0]
    assert gradcam["status"] == "done"
    assert 0.0 <= gradcam["scores"]["deletion_auc"] <= 1.0
    overlay = client.get(gradcam["overlay_url"])
    assert overlay.status_code == 200
    assert overlay["Content-Type"] == "image/png"
    assert overlay["Cache-Control"] == "private, no-store"
    png = _content(overlay)
    assert png.startswith(PNG_MAGIC)
    assert Image.open(io.BytesIO(png)).size[0] > 128
    heatmap = client.get(gradcam["heatmap_url"])
    assert heatmap["Content-Disposition"].startswith("attachment;")
    values = np.load(io.BytesIO(_content(heatmap)))
    assert values.shape == (128, 128)
    assert float(values.max()) == pytest.approx(1.0)
    original = client.get(image["file_url"])
    assert original["Content-Type"] == "image/png"  # re-encoded: pixels, no metadata
    with Image.open(io.BytesIO(_content(original))) as served:
        assert served.tobytes() == Image.open(IMAGES / "2168a917.jpg").tobytes()


def test_missing_images_and_overlong_fields_are_400_with_field_errors(api_as, clinician):
    client = api_as("clinician")
    error = _error(client.post("/api/v1/cases/", {"notes": "x"}, format="multipart"), 400)
    assert error["fields"] == {"images": ["This field is required."]}
    error = _error(
        client.post(
            "/api/v1/cases/",
            {"images": [upload_of("2168a917.jpg")], "patient_ref": "x" * 65},
            format="multipart",
        ),
        400,
    )
    assert list(error["fields"]) == ["patient_ref"]
    assert "patient_ref" in error["message"]
    error = _error(client.post("/api/v1/cases/", {"images": "not a file"}, format="multipart"), 400)
    assert list(error["fields"]) == ["images.0"]
    assert Case.objects.count() == 0


@pytest.mark.slow
def test_empty_or_corrupt_image_is_400_naming_the_file(api_as, clinician, media_root):
    client = api_as("clinician")
    empty = _error(
        client.post("/api/v1/cases/", {"images": [upload_of("x.jpg", b"")]}, format="multipart"),
        400,
    )
    assert empty["message"] == "x.jpg: the file is empty."
    assert empty["fields"] == {"images": ["x.jpg: the file is empty."]}
    truncated = (IMAGES / "2168a917.jpg").read_bytes()[:2000]
    error = _error(
        client.post(
            "/api/v1/cases/", {"images": [upload_of("cut.jpg", truncated)]}, format="multipart"
        ),
        400,
    )
    assert error["message"].startswith("cut.jpg: the image is truncated or corrupt")
    assert Case.objects.count() == 0
    assert stored_files(media_root) == []


def test_oversize_upload_is_413_naming_the_file_and_stores_nothing(
    api_as, clinician, settings, media_root
):
    settings.CXR_MAX_UPLOAD_BYTES = 2048
    response = api_as("clinician").post(
        "/api/v1/cases/",
        {"images": [upload_of("IM-0117-0001.jpeg"), upload_of("2168a917.jpg")]},
        format="multipart",
    )
    error = _error(response, 413)
    assert error["code"] == "payload_too_large"
    assert error["message"].startswith("IM-0117-0001.jpeg: the file is ")
    assert "the limit is 2048 bytes" in error["message"]
    assert Case.objects.count() == 0
    assert stored_files(media_root) == []


def test_non_image_upload_is_415_naming_the_file(api_as, clinician):
    response = api_as("clinician").post(
        "/api/v1/cases/",
        {"images": [upload_of("report.pdf", b"%PDF-1.4 not an x-ray", "application/pdf")]},
        format="multipart",
    )
    error = _error(response, 415)
    assert error["code"] == "unsupported_media_type"
    assert error["message"].startswith("report.pdf: this is not an image file")
    assert Case.objects.count() == 0


def test_json_body_for_a_case_is_415(api_as, clinician):
    response = api_as("clinician").post("/api/v1/cases/", {"images": []}, format="json")
    error = _error(response, 415)
    assert "application/json" in error["message"]


# -- filters and pagination -----------------------------------------------------


@pytest.fixture
def three_cases(clinician, production_model, django_capture_on_commit_callbacks):
    from apps.cases import services

    with django_capture_on_commit_callbacks(execute=False):
        done = predicted_case(clinician, "2168a917.jpg")
        waiting = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
        old = predicted_case(clinician, "IM-0117-0001.jpeg")
    Case.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=30))
    return done, waiting, old


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [c["id"] for c in response.json()["results"]]


@pytest.mark.slow
def test_cases_filter_by_status_label_and_date(api_as, three_cases):
    done, waiting, old = three_cases
    client = api_as("clinician")
    assert _ids(client.get("/api/v1/cases/")) == [waiting.pk, done.pk, old.pk]
    assert _ids(client.get("/api/v1/cases/?status=processing")) == [waiting.pk]
    assert _ids(client.get("/api/v1/cases/?status=done")) == [done.pk, old.pk]
    label = Prediction.objects.get(image__case=done).label
    expected = [c.pk for c in (done, old) if Prediction.objects.get(image__case=c).label == label]
    assert _ids(client.get(f"/api/v1/cases/?label={label}")) == expected
    since = (timezone.now() - timedelta(days=1)).date().isoformat()
    assert _ids(client.get(f"/api/v1/cases/?created_after={since}")) == [waiting.pk, done.pk]
    assert _ids(client.get(f"/api/v1/cases/?created_before={since}")) == [old.pk]
    assert _ids(client.get("/api/v1/cases/?expert_label=normal")) == []


@pytest.mark.slow
def test_invalid_filter_values_are_400_naming_the_parameter(api_as, three_cases):
    client = api_as("clinician")
    error = _error(client.get("/api/v1/cases/?status=finished"), 400)
    assert list(error["fields"]) == ["status"]
    error = _error(client.get("/api/v1/cases/?created_after=yesterday"), 400)
    assert list(error["fields"]) == ["created_after"]


@pytest.mark.slow
def test_pagination_pages_and_caps_the_page_size(api_as, three_cases, model_admin):
    client = api_as("clinician")
    first = client.get("/api/v1/cases/?page_size=2").json()
    assert first["count"] == 3
    assert len(first["results"]) == 2
    assert first["previous"] is None
    second = client.get(first["next"]).json()
    assert len(second["results"]) == 1
    assert second["next"] is None
    _error(client.get("/api/v1/cases/?page=9"), 404)

    ModelVersion.objects.bulk_create(
        ModelVersion(name=f"v{i}", sha256=f"{i:064x}", artifact="models/x.keras")
        for i in range(120)
    )
    admin = api_as("model_admin")
    assert len(admin.get("/api/v1/models/").json()["results"]) == 20
    capped = admin.get("/api/v1/models/?page_size=1000").json()
    assert capped["count"] == 121
    assert len(capped["results"]) == 100


# -- explanations: 202 for queued work --------------------------------------------


@pytest.mark.slow
def test_explanation_request_is_202_then_the_same_job_then_200_when_done(
    api_as, clinician, production_model, django_capture_on_commit_callbacks
):
    case = predicted_case(clinician)
    image = case.images.get()
    client = api_as("clinician")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = client.post(f"/api/v1/images/{image.pk}/explanations/", {"method": "smoothgrad"})
    assert first.status_code == 202
    job = first.json()
    assert (job["method"], job["status"], job["image"]) == ("smoothgrad", "pending", image.pk)
    assert first["Location"].endswith(f"/api/v1/explanations/{job['id']}/")
    assert len(callbacks) == 1
    again = client.post(f"/api/v1/images/{image.pk}/explanations/", {"method": "smoothgrad"})
    assert again.status_code == 202
    assert again.json()["id"] == job["id"]

    run_job_now(Explanation, job["id"])
    polled = client.get(first["Location"]).json()
    assert polled["status"] == "done"
    done = client.post(f"/api/v1/images/{image.pk}/explanations/", {"method": "smoothgrad"})
    assert done.status_code == 200
    assert done.json()["overlay_url"].endswith(f"/api/v1/explanations/{job['id']}/overlay/")


def test_explanation_request_errors(api_as, clinician, production_model):
    from apps.cases import services

    client = api_as("clinician")
    case = predicted_case(clinician)
    image = case.images.get()
    error = _error(client.post(f"/api/v1/images/{image.pk}/explanations/", {"method": "x"}), 400)
    assert list(error["fields"]) == ["method"]
    waiting = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    error = _error(
        client.post(
            f"/api/v1/images/{waiting.images.get().pk}/explanations/", {"method": "gradcam"}
        ),
        409,
    )
    assert "no finished prediction" in error["message"]
    _error(client.post("/api/v1/images/999999/explanations/", {"method": "gradcam"}), 404)


# -- labels: the one label path -------------------------------------------------


def test_annotator_labels_through_the_labelling_service(
    api_as, annotator, clinician, production_model
):
    image = predicted_case(clinician).images.get()
    client = api_as("annotator")
    queue = client.get("/api/v1/labelling/queue/").json()
    assert [i["id"] for i in queue["results"]] == [image_ref(image)]

    url = f"/api/v1/labelling/images/{image_ref(image)}/labels/"
    created = client.post(url, {"label": "pneumonia", "note": "x"})
    assert created.status_code == 201
    assert created.json()["confirmed_label"] == "pneumonia"  # CXR_LABEL_AGREEMENT is 1
    changed = client.post(url, {"label": "normal"})
    assert changed.status_code == 200
    assert changed.json()["id"] == created.json()["id"]
    image.refresh_from_db()
    assert image.confirmed_label == "normal"
    actions = list(
        AuditEvent.objects.filter(actor=annotator).order_by("pk").values_list("action", flat=True)
    )
    assert actions == ["label.create", "label.change"]
    assert client.get("/api/v1/labelling/queue/").json()["results"] == []

    error = _error(client.post(url, {"label": "maybe"}), 400)
    assert list(error["fields"]) == ["label"]


def test_label_on_an_image_without_a_finished_prediction_is_409(api_as, db, production_model):
    from apps.cases import services

    both = UserFactory(username="both", roles=["clinician", "annotator"])
    case = services.create_case(owner=both, files=[upload_of("2168a917.jpg")])
    response = api_as(both).post(
        f"/api/v1/labelling/images/{image_ref(case.images.get())}/labels/", {"label": "normal"}
    )
    assert "no finished prediction" in _error(response, 409)["message"]


# -- registry: the one promote path -----------------------------------------------


def test_model_admin_promotes_and_rolls_back_with_audit(api_as, model_admin, production_model):
    candidate = ModelVersion.objects.create(
        name="candidate", sha256="c" * 64, artifact=production_model.artifact.name
    )
    client = api_as("model_admin")
    listed = client.get("/api/v1/models/").json()
    assert {v["id"] for v in listed["results"]} == {candidate.pk, production_model.pk}
    detail = client.get(f"/api/v1/models/{production_model.pk}/").json()
    assert detail["status"] == "production"
    assert "classes" in detail["card"]

    promoted = client.post(f"/api/v1/models/{candidate.pk}/promote/", {"reason": "better"})
    assert promoted.status_code == 200
    assert promoted.json()["status"] == "production"
    production_model.refresh_from_db()
    assert production_model.status == "archived"
    event = AuditEvent.objects.get(action="model.promote", actor=model_admin)
    assert event.after["reason"] == "better"

    rolled = client.post("/api/v1/models/rollback/")
    assert rolled.status_code == 200
    assert rolled.json()["id"] == production_model.pk
    assert AuditEvent.objects.filter(action="model.rollback", actor=model_admin).count() == 1

    candidate.refresh_from_db()
    ModelVersion.objects.filter(pk=candidate.pk).update(status="failed")
    error = _error(client.post(f"/api/v1/models/{candidate.pk}/promote/"), 409)
    assert error["message"] == "A failed model version cannot be promoted."


@pytest.mark.slow
def test_training_run_is_202_and_its_progress_is_readable(
    api_as, model_admin, production_model, django_capture_on_commit_callbacks
):
    client = api_as("model_admin")
    error = _error(client.post("/api/v1/training-runs/"), 409)
    assert "import_dataset" in error["message"]  # no reference images yet

    import_reference_dataset(IMAGES / "manifest.csv", "generic")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/api/v1/training-runs/")
    assert response.status_code == 202
    run = TrainingRun.objects.get()
    assert response.json()["id"] == run.pk
    assert response.json()["status"] == "pending"
    assert response["Location"].endswith(f"/api/v1/training-runs/{run.pk}/")
    assert len(callbacks) == 1
    TrainingRun.objects.filter(pk=run.pk).update(
        status="running", progress={"epoch": 2, "epochs": 4, "batch": 5, "batches": 10}
    )
    detail = client.get(response["Location"]).json()
    assert (detail["status"], detail["percent"]) == ("running", 37)
    assert _error(client.post("/api/v1/training-runs/"), 409)["message"].startswith(
        f"Training run {run.pk} is still running"
    )


# -- protected files ----------------------------------------------------------------


def test_files_go_through_x_accel_redirect_when_configured(api_as, clinician, settings):
    settings.CXR_PROTECTED_MEDIA_ACCEL_PREFIX = "/protected/"
    # Stored rows and files as a finished job leaves them (no model run needed here).
    explanation = ExplanationFactory(image__case__owner=clinician)
    image = explanation.image
    client = api_as("clinician")
    for url, name, content_type in (
        (f"/api/v1/images/{image.pk}/file/", image.file.name, "image/png"),
        (f"/api/v1/explanations/{explanation.pk}/overlay/", explanation.overlay.name, "image/png"),
        (
            f"/api/v1/explanations/{explanation.pk}/heatmap/",
            explanation.heatmap.name,
            "application/octet-stream",
        ),
    ):
        response = client.get(url)
        assert response.status_code == 200
        assert response.content == b""
        assert response["X-Accel-Redirect"] == f"/protected/{name}"
        assert response["Content-Type"] == content_type
        assert response["Cache-Control"] == "private, no-store"
    # Access is still decided by Django: no redirect header for someone else.
    refused = api_as("other_clinician").get(f"/api/v1/images/{image.pk}/file/")
    assert refused.status_code == 404
    assert "X-Accel-Redirect" not in refused


def test_protected_file_response_streams_and_404s_a_missing_file(
    clinician, production_model, media_root
):
    from django.http import Http404

    from cxrplatform.protected import protected_file_response

    image = predicted_case(clinician).images.get()
    response = protected_file_response(image.file, "image/png", download_name="x ray.png")
    assert _content(response) == (media_root / image.file.name).read_bytes()
    assert response["Cache-Control"] == "private, no-store"
    assert response["Content-Disposition"] == 'attachment; filename="x ray.png"'
    image.file.close()
    (media_root / image.file.name).unlink()
    image = CaseImage.objects.get(pk=image.pk)
    with pytest.raises(Http404):
        protected_file_response(image.file, "image/png")


def test_media_files_have_no_public_url(client, clinician, production_model):
    image = predicted_case(clinician).images.get()
    assert client.get(f"/media/{image.file.name}").status_code == 404
    assert client.get(f"/{image.file.name}").status_code == 404


# -- schema and docs ----------------------------------------------------------------


def test_openapi_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.json"
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json",
                 "--file", str(out))  # fmt: skip
    schema = json.loads(out.read_text())
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    assert "multipart/form-data" in paths["/api/v1/cases/"]["post"]["requestBody"]["content"]
    assert set(paths["/api/v1/cases/"]["post"]["responses"]) >= {"201", "400", "413", "415"}
    assert "202" in paths["/api/v1/images/{id}/explanations/"]["post"]["responses"]
    assert "202" in paths["/api/v1/training-runs/"]["post"]["responses"]
    params = {p["name"] for p in paths["/api/v1/cases/"]["get"]["parameters"]}
    assert params >= {"status", "label", "created_after", "created_before", "page", "page_size"}


def test_interactive_docs_are_served_from_local_static_files(client, db):
    for url in ("/api/v1/docs/", "/api/v1/redoc/"):
        html = client.get(url).content.decode()
        assert "/static/drf_spectacular_sidecar/" in html
        for cdn in ("cdn.", "jsdelivr", "unpkg", "cdnjs"):
            assert cdn not in html
    for asset in (
        "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
        "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
        "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js",
    ):
        assert finders.find(asset), asset


# -- settings -------------------------------------------------------------------------


def _settings_value(expr: str, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k not in {"CELERY_BROKER_URL", "CACHE_URL"}}
    full.update(DJANGO_SETTINGS_MODULE="cxrplatform.settings", DEBUG="1", **env)
    code = f"import django; django.setup(); from django.conf import settings; print({expr})"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=full, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    return result.stdout.strip() or result.stderr


@pytest.mark.slow
def test_throttle_counts_live_in_redis_when_the_broker_is_redis(tmp_path):
    backend = "settings.CACHES['default']['BACKEND']"
    var = str(tmp_path)
    assert _settings_value(backend, CXR_VAR_DIR=var).endswith("LocMemCache")
    assert _settings_value(
        backend, CXR_VAR_DIR=var, CELERY_BROKER_URL="redis://127.0.0.1:6379/12"
    ).endswith("RedisCache")
    bad = _settings_value(backend, CXR_VAR_DIR=var, CXR_AUTH_THROTTLE_RATE="lots")
    assert "CXR_AUTH_THROTTLE_RATE='lots' is not a rate" in bad


def test_page_and_page_size_must_be_positive_numbers(api_as, clinician):
    client = api_as("clinician")
    for query, field in (("page=0", "page"), ("page=x", "page"), ("page_size=-1", "page_size")):
        error = _error(client.get(f"/api/v1/cases/?{query}"), 400)
        assert list(error["fields"]) == [field]


def test_unknown_api_urls_are_404_in_the_error_body(api_as, clinician):
    for url in ("/api/v1/cases/-1/", "/api/v1/nothing-here/"):
        error = _error(api_as("clinician").get(url), 404)
        assert error["code"] == "not_found"

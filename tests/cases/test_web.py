import pytest
from django.urls import reverse

from apps.cases import services
from apps.cases.models import Case, Prediction
from cxrplatform.jobs import run_job_now
from tests.conftest import stored_files, upload_of


@pytest.fixture
def case_of(django_capture_on_commit_callbacks):
    def _make(owner, name="2168a917.jpg"):
        with django_capture_on_commit_callbacks(execute=False):
            return services.create_case(
                owner=owner, files=[upload_of(name)], patient_ref="PSEUDO-1"
            )

    return _make


def test_login_page_renders_a_form_with_labelled_fields(client, db):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    body = response.content.decode()
    assert '<label for="id_username">' in body
    assert '<label for="id_password">' in body


def test_demo_clinician_logs_in_with_password_and_lands_on_their_cases(client, clinician):
    from tests.factories import PASSWORD

    response = client.post(reverse("login"), {"username": "dr-a", "password": PASSWORD})
    assert response.status_code == 302
    response = client.get(response.url)
    assert response.status_code == 302
    assert response.url == reverse("cases:list")


@pytest.mark.slow
def test_clinician_uploads_through_the_form_and_sees_the_prediction(
    login, clinician, production_model, django_capture_on_commit_callbacks
):
    client = login(clinician)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            reverse("cases:create"),
            {
                "images": [upload_of("2168a917.jpg"), upload_of("IM-0117-0001.jpeg")],
                "patient_ref": "P-9",
            },
        )
    assert response.status_code == 302
    case = Case.objects.get(owner=clinician)
    assert response.url == reverse("cases:detail", args=[case.pk])
    assert len(callbacks) == 2

    page = client.get(response.url).content.decode()
    assert "Classifying" in page
    # Live page: each image still processing is marked for the page's script to re-fetch.
    assert page.count("data-live-pending") == 3  # the case status and both images

    for prediction in Prediction.objects.filter(image__case=case):
        run_job_now(Prediction, prediction.pk)
    page = client.get(response.url).content.decode()
    done = Prediction.objects.filter(image__case=case, status="done")
    assert done.count() == 2
    for prediction in done:
        assert f'data-label="{prediction.label}"' in page
    assert production_model.sha256[:12] in page
    # Each prediction queued a Grad-CAM: the page keeps refreshing until it is there.
    assert page.count('data-method="gradcam" data-status="pending"') == 2
    assert page.count("data-live-pending") == 2  # the case is done, the heatmaps are not


def test_upload_form_shows_the_rejection_next_to_the_field(login, clinician, media_root):
    client = login(clinician)
    response = client.post(reverse("cases:create"), {"images": [upload_of("x.jpg", b"")]})
    assert response.status_code == 400
    assert "the file is empty." in response.content.decode()
    assert Case.objects.count() == 0


def test_upload_answers_json_naming_each_refused_file(login, clinician, media_root):
    client = login(clinician)
    response = client.post(
        reverse("cases:create"),
        {
            "images": [
                upload_of("x.jpg", b""),
                upload_of("2168a917.jpg"),
                upload_of("y.png", b"not an image"),
            ]
        },
        headers={"accept": "application/json"},
    )
    assert response.status_code == 400
    body = response.json()
    assert body["files"] == [
        {"name": "x.jpg", "problem": "the file is empty."},
        {
            "name": "y.png",
            "problem": (
                "this is not an image file this platform can read; upload PNG, JPEG or DICOM."
            ),
        },
    ]
    assert Case.objects.count() == 0
    assert stored_files(media_root) == []


def test_upload_answers_json_with_the_new_case(
    login, clinician, production_model, django_capture_on_commit_callbacks
):
    client = login(clinician)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            reverse("cases:create"),
            {"images": [upload_of("2168a917.jpg")], "notes": "cough"},
            headers={"accept": "application/json"},
        )
    assert response.status_code == 201
    case = Case.objects.get(owner=clinician)
    assert response.json() == {"id": case.pk, "url": reverse("cases:detail", args=[case.pk])}
    assert case.notes == "cough"


def test_clinician_sees_only_their_own_cases(login, clinician, other_clinician, case_of):
    mine, theirs = case_of(clinician), case_of(other_clinician)
    page = login(clinician).get(reverse("cases:list")).content.decode()
    assert reverse("cases:detail", args=[mine.pk]) in page
    assert reverse("cases:detail", args=[theirs.pk]) not in page


@pytest.mark.parametrize(
    ("who", "page", "file"),
    [
        ("anonymous", 302, 302),
        ("owner", 200, 200),
        ("other_clinician", 404, 404),
        # annotators see images (never cases), by reference on the labelling pages, not by id
        ("annotator", 403, 403),
        ("model_admin", 403, 403),
    ],
)
@pytest.mark.slow
def test_case_page_and_image_file_access_matrix(
    client, who, page, file, clinician, other_clinician, annotator, model_admin, case_of
):
    case = case_of(clinician)
    image = case.images.get()
    users = {
        "owner": clinician,
        "other_clinician": other_clinician,
        "annotator": annotator,
        "model_admin": model_admin,
    }
    if who != "anonymous":
        client.force_login(users[who])
    for url, expected in (
        (reverse("cases:detail", args=[case.pk]), page),
        (reverse("cases:image-file", args=[image.pk]), file),
    ):
        response = client.get(url)
        assert response.status_code == expected, url
        if expected == 302:
            assert response.url.startswith(reverse("login"))
    if who == "owner":
        response = client.get(reverse("cases:image-file", args=[image.pk]))
        assert response["Content-Type"] == "image/png"  # uploads are stored re-encoded
        assert b"".join(response.streaming_content) == image.file.open("rb").read()
        assert response["Cache-Control"] == "private, no-store"


def test_image_file_is_handed_to_the_proxy_when_configured(login, clinician, case_of, settings):
    settings.CXR_PROTECTED_MEDIA_ACCEL_PREFIX = "/protected/"
    image = case_of(clinician).images.get()
    response = login(clinician).get(reverse("cases:image-file", args=[image.pk]))
    assert response.status_code == 200
    assert response["X-Accel-Redirect"] == f"/protected/{image.file.name}"
    assert response.content == b""


@pytest.mark.parametrize(
    ("who", "expected"),
    [("anonymous", 302), ("clinician", 200), ("annotator", 403), ("model_admin", 403)],
)
@pytest.mark.parametrize("name", ["cases:list", "cases:create"])
def test_case_list_and_upload_are_for_clinicians_only(
    client, who, expected, name, clinician, annotator, model_admin
):
    users = {"clinician": clinician, "annotator": annotator, "model_admin": model_admin}
    if who != "anonymous":
        client.force_login(users[who])
    assert client.get(reverse(name)).status_code == expected


def test_user_without_role_sees_why_on_home(client, db):
    from tests.factories import UserFactory

    client.force_login(UserFactory(username="nobody"))
    response = client.get(reverse("home"))
    assert response.status_code == 200
    assert "Your account has no role." in response.content.decode()
    assert client.get(reverse("cases:list")).status_code == 403


def test_model_admin_home_names_the_production_model(login, model_admin, production_model):
    page = login(model_admin).get(reverse("home")).content.decode()
    assert reverse("registry:version", args=[production_model.pk]) in page
    assert production_model.name in page
    assert "0 candidates waiting for review" in page


def test_annotator_home_counts_the_images_waiting(
    login, annotator, clinician, case_of, production_model
):
    from apps.cases.models import Prediction

    case = case_of(clinician)
    prediction = Prediction.objects.get(image__case=case)
    prediction.mark_running()
    prediction.mark_done(
        model_version_id=production_model.pk,
        label="normal",
        probabilities={"covid19": 0.1, "pneumonia": 0.1, "normal": 0.8},
        preprocess_ms=1.0,
        inference_ms=1.0,
    )
    page = login(annotator).get(reverse("home")).content.decode()
    assert "<strong data-to-label>1</strong> image waiting for your label" in page
    assert "PSEUDO-1" not in page


def _listed(response) -> list[int]:
    import re

    return [int(pk) for pk in re.findall(r'data-case="(\d+)"', response.content.decode())]


@pytest.mark.slow
def test_case_list_filters_by_status_label_expert_label_and_date(
    login, clinician, production_model, case_of
):
    import datetime

    from django.utils import timezone

    from apps.cases.models import CaseImage

    processing = case_of(clinician)
    covid = case_of(clinician)
    normal = case_of(clinician, "00001280_004.jpg")
    failed = case_of(clinician)
    version = production_model
    for case, label in ((covid, "covid19"), (normal, "normal")):
        prediction = Prediction.objects.get(image__case=case)
        probabilities = {"covid19": 0.1, "pneumonia": 0.1, "normal": 0.1, label: 0.8}
        prediction.mark_running()
        prediction.mark_done(
            model_version_id=version.pk,
            label=label,
            probabilities=probabilities,
            preprocess_ms=1.0,
            inference_ms=1.0,
        )
    Prediction.objects.get(image__case=failed).mark_failed("model missing")
    CaseImage.objects.filter(case=normal).update(confirmed_label="pneumonia")
    old = timezone.now() - datetime.timedelta(days=40)
    Case.objects.filter(pk=normal.pk).update(created_at=old)

    client = login(clinician)
    url = reverse("cases:list")
    assert _listed(client.get(url)) == [failed.pk, covid.pk, processing.pk, normal.pk]
    assert _listed(client.get(url, {"status": "done"})) == [covid.pk, normal.pk]
    assert _listed(client.get(url, {"status": "processing"})) == [processing.pk]
    assert _listed(client.get(url, {"status": "failed"})) == [failed.pk]
    assert _listed(client.get(url, {"label": "covid19"})) == [covid.pk]
    assert _listed(client.get(url, {"expert_label": "pneumonia"})) == [normal.pk]
    since = (timezone.now() - datetime.timedelta(days=7)).date().isoformat()
    assert normal.pk not in _listed(client.get(url, {"created_after": since}))
    assert _listed(client.get(url, {"created_before": since})) == [normal.pk]
    # Live page: only the unfinished case keeps the page polling.
    body = client.get(url).content.decode()
    assert body.count("data-live-pending") == 1
    # A bad filter value is an error on the form, not a silently unfiltered list.
    response = client.get(url, {"status": "sleeping"})
    assert response.status_code == 200
    assert _listed(response) == []
    assert "Select a valid choice" in response.content.decode()


def test_case_list_empty_state_invites_the_first_upload(login, clinician):
    body = login(clinician).get(reverse("cases:list")).content.decode()
    assert "No cases yet" in body
    assert reverse("cases:create") in body

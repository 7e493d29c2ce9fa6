"""Lung fields per prediction: stored with it (mask, outline, box, area, segmenter
version), flagged when not found, and never the reason a prediction fails."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DatabaseError
from django.urls import reverse
from PIL import Image, ImageOps

from apps.cases import services
from apps.cases.access import image_ref
from apps.cases.lungs import SEGMENTATION_OFF, stored_lungs
from apps.cases.models import Prediction
from apps.explain.models import Explanation
from cxrplatform.jobs import run_job_now
from tests.conftest import IMAGES, stored_files, upload_of

pytestmark = pytest.mark.django_db

NOT_FOUND = "lung fields not found: is this a frontal chest X-ray?"


def _png(image: Image.Image, name: str = "image.png") -> SimpleUploadedFile:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/png")


@pytest.fixture
def predicted(clinician, production_model, django_capture_on_commit_callbacks):
    """Upload one file, run its prediction in this process, return the prediction."""

    def _predict(upload) -> Prediction:
        with django_capture_on_commit_callbacks(execute=False):
            case = services.create_case(owner=clinician, files=[upload])
        prediction = Prediction.objects.get(image__case=case)
        run_job_now(Prediction, prediction.pk)
        prediction.refresh_from_db()
        return prediction

    return _predict


def _read_png(field) -> Image.Image:
    with field.open("rb") as fh:
        image = Image.open(io.BytesIO(fh.read()))
        image.load()
    return image


def test_prediction_stores_lung_mask_outline_box_and_area_with_the_segmenter_version(predicted):
    prediction = predicted(upload_of("2168a917.jpg"))
    image = prediction.image
    assert prediction.status == Prediction.Status.DONE
    assert prediction.lungs_found is True
    assert prediction.lung_message == ""
    assert re.fullmatch(r"lung-unet@[0-9a-f]{12}", prediction.segmenter_version)

    mask_png = _read_png(prediction.lung_mask)
    assert mask_png.mode == "L"
    assert mask_png.size == (image.width, image.height)
    mask = np.asarray(mask_png)
    assert set(np.unique(mask)) == {0, 255}
    lungs = mask == 255
    assert prediction.lung_area_fraction == pytest.approx(lungs.mean(), abs=1e-6)
    assert 0.04 < prediction.lung_area_fraction < 0.65

    rows, cols = np.flatnonzero(lungs.any(axis=1)), np.flatnonzero(lungs.any(axis=0))
    assert prediction.lung_bbox == [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]

    outline = np.asarray(_read_png(prediction.lung_outline))
    assert outline.shape == (image.height, image.width, 4)
    drawn = outline[..., 3] > 0
    assert drawn.any()
    assert not (drawn & ~lungs).any()  # the contour lies on the mask's edge, inside it
    assert drawn.sum() < 0.2 * lungs.sum()  # a line, not a filled area


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda im: im.rotate(90, expand=True), id="rotated"),
        pytest.param(lambda im: ImageOps.invert(im.convert("L")), id="inverted"),
    ],
)
@pytest.mark.slow
def test_rotated_or_inverted_film_records_lungs_not_found_and_still_gets_a_prediction(
    predicted, make, settings
):
    # The upload gates might refuse such a film; this is about the worker, so they are off.
    settings.CXR_OOD_GATE = settings.CXR_VIEW_CHECK = None
    with Image.open(IMAGES / "2168a917.jpg") as original:
        prediction = predicted(_png(make(original)))
    assert prediction.status == Prediction.Status.DONE
    assert prediction.label in {"covid19", "pneumonia", "normal"}
    assert prediction.lungs_found is False
    assert prediction.lung_message.startswith(NOT_FOUND + " (")
    assert prediction.segmenter_version.startswith("lung-unet@")
    assert prediction.lung_bbox is None
    assert not prediction.lung_mask
    assert not prediction.lung_outline


def test_blank_image_records_lungs_not_found_and_still_gets_a_prediction(predicted, settings):
    settings.CXR_OOD_GATE = settings.CXR_VIEW_CHECK = None  # the gate refuses blanks at upload
    prediction = predicted(_png(Image.new("L", (300, 260), 128)))
    assert prediction.status == Prediction.Status.DONE
    assert prediction.lungs_found is False
    assert prediction.lung_message == f"{NOT_FOUND} (blank image)"
    assert prediction.lung_area_fraction == 0.0


def test_a_broken_lung_model_is_recorded_and_the_prediction_still_succeeds(
    predicted, settings, tmp_path
):
    broken = tmp_path / "lung-unet.keras"
    broken.write_bytes(b"not a keras file")
    (tmp_path / "lung-unet.card.json").write_text('{"name": "lung-unet"}')
    settings.CXR_LUNG_MODEL = broken
    prediction = predicted(upload_of("2168a917.jpg"))
    assert prediction.status == Prediction.Status.DONE
    assert prediction.error == ""
    assert prediction.lungs_found is None
    assert prediction.lung_message.startswith("Lung segmentation failed (")
    assert not prediction.lung_mask


def test_a_lung_mask_that_cannot_be_stored_is_recorded_and_the_prediction_still_succeeds(
    predicted, media_root
):
    (media_root / "lungs").write_text("a file where the lungs/ folder should be")
    prediction = predicted(upload_of("2168a917.jpg"))
    assert prediction.status == Prediction.Status.DONE
    assert prediction.lungs_found is None
    assert prediction.lung_message.startswith("The lung mask could not be stored (")
    assert not prediction.lung_mask
    assert not prediction.lung_outline


def test_with_segmentation_off_the_prediction_says_so(predicted, settings):
    settings.CXR_LUNG_MODEL = None
    prediction = predicted(upload_of("2168a917.jpg"))
    assert prediction.status == Prediction.Status.DONE
    assert prediction.lungs_found is None
    assert prediction.lung_message == SEGMENTATION_OFF


def test_deleting_a_prediction_deletes_its_lung_files(
    predicted, media_root, django_capture_on_commit_callbacks
):
    prediction = predicted(upload_of("2168a917.jpg"))
    names = {prediction.lung_mask.name, prediction.lung_outline.name}
    assert all((media_root / name).exists() for name in names)
    Explanation.objects.filter(image=prediction.image).delete()
    with django_capture_on_commit_callbacks(execute=True):
        prediction.delete()
    assert not any((media_root / name).exists() for name in names)
    assert not [p for p in stored_files(media_root) if "lungs" in p.parts]


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_prediction_whose_result_row_is_refused_leaves_no_lung_files(
    clinician, production_model, media_root
):
    from tests.reliability.test_rollback_files import database_refuses

    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    with (
        database_refuses(Prediction._meta.db_table, "UPDATE", "NEW.status = 'done'"),
        pytest.raises(DatabaseError),
    ):
        run_job_now(Prediction, prediction.pk)
    assert not [p for p in stored_files(media_root) if "lungs" in p.parts]
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.RUNNING  # retried by the task or the sweeper
    assert not prediction.lung_mask


# -- heatmap mass on the lungs -----------------------------------------------------------


@pytest.mark.parametrize("name", ["2168a917.jpg", "person1003_virus_1685.jpeg"])
@pytest.mark.slow
def test_explanation_stores_the_share_of_its_heatmap_on_the_lungs(predicted, name):
    """The stored share is the heatmap's positive mass inside the lung mask carried into
    the model's frame (letterboxed for this model; the paediatric film is landscape)."""
    from ml.data.preprocess import PreprocessSpec, open_image, prepare
    from ml.lungs.masks import mass_in_mask

    prediction = predicted(upload_of(name))
    explanation = Explanation.objects.get(image=prediction.image, method="gradcam")
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    assert explanation.status == Explanation.Status.DONE, explanation.error
    assert explanation.mass_in_lungs is not None
    assert 0.0 <= explanation.mass_in_lungs <= 1.0
    assert explanation.scores["mass_in_lungs"] == explanation.mass_in_lungs
    assert {"deletion_auc", "insertion_auc"} <= set(explanation.scores)

    with explanation.heatmap.open("rb") as fh:
        heatmap = np.load(fh, allow_pickle=False)
    lungs = stored_lungs(prediction.image)
    assert lungs is not None
    spec = PreprocessSpec.from_dict(explanation.model_version.card["preprocessing"])
    frame = prepare(open_image(IMAGES / name), spec, lungs.mask).lung_mask
    assert frame is not None
    assert frame.shape == heatmap.shape
    assert explanation.mass_in_lungs == pytest.approx(mass_in_mask(heatmap, frame), abs=1e-4)


@pytest.mark.slow
def test_explanation_of_an_image_without_lungs_has_no_mass_in_lungs(predicted, settings):
    settings.CXR_OOD_GATE = settings.CXR_VIEW_CHECK = None
    with Image.open(IMAGES / "2168a917.jpg") as original:
        prediction = predicted(_png(original.rotate(90, expand=True)))
    assert prediction.lungs_found is False
    explanation = Explanation.objects.get(image=prediction.image, method="gradcam")
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    assert explanation.status == Explanation.Status.DONE, explanation.error
    assert explanation.mass_in_lungs is None
    assert explanation.scores["mass_in_lungs"] is None


@pytest.fixture
def lung_frame_model(tmp_path, db):
    """The tiny test model with a preprocessing-v2 card (crop to the lung fields of the
    bundled segmenter), registered as production: real weights, a real v2 pipeline."""
    import json
    import shutil
    import zipfile

    from django.conf import settings as django_settings

    from apps.models.services import register_artifact
    from ml.models.artifacts import read_card, sha256_file

    source = django_settings.CXR_BUNDLED_MODEL
    artifact = tmp_path / "cxr-tiny-v2.keras"
    shutil.copyfile(source, artifact)
    # Same weights, different bytes: the registry (and the worker's model cache) key
    # versions by sha256, and this must not be mistaken for the v1 test model.
    with zipfile.ZipFile(artifact, "a") as archive:
        archive.comment = b"cxr-tiny with a preprocessing-v2 card (tests)"
    lung_model = django_settings.CXR_LUNG_MODEL
    assert lung_model is not None
    card = read_card(source)
    card["preprocessing"] = {
        **card["preprocessing"],
        "version": 2,
        "segmenter": {
            "artifact": lung_model.name,
            "sha256": sha256_file(lung_model),
        },
    }
    card["sha256"] = sha256_file(artifact)
    (tmp_path / "cxr-tiny-v2.card.json").write_text(json.dumps(card))
    return register_artifact(artifact_path=artifact, make_production=True)


@pytest.mark.slow
def test_a_lung_frame_model_reuses_the_stored_segmentation_and_measures_mass_in_its_frame(
    clinician, lung_frame_model, django_capture_on_commit_callbacks
):
    from apps.models.serving import classifier_for
    from ml.data.preprocess import PreprocessSpec, open_image, prepare
    from ml.lungs.masks import mass_in_mask

    with django_capture_on_commit_callbacks(execute=False):
        case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.DONE, prediction.error
    assert prediction.model_version == lung_frame_model
    assert prediction.lungs_found is True
    # The classifier took the worker's segmentation instead of loading its own segmenter.
    classifier = classifier_for(lung_frame_model)
    assert classifier.needs_lungs
    assert classifier._segmenter is None

    explanation = Explanation.objects.get(image=prediction.image, method="gradcam")
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    assert explanation.status == Explanation.Status.DONE, explanation.error
    assert classifier._segmenter is None
    with explanation.heatmap.open("rb") as fh:
        heatmap = np.load(fh, allow_pickle=False)
    spec = PreprocessSpec.from_dict(lung_frame_model.card["preprocessing"])
    lungs = stored_lungs(case.images.get())
    assert lungs is not None
    prepared = prepare(open_image(IMAGES / "2168a917.jpg"), spec, lungs.mask)
    assert prepared.used_lungs
    assert prepared.lung_mask is not None
    assert explanation.mass_in_lungs == pytest.approx(
        mass_in_mask(heatmap, prepared.lung_mask), abs=1e-4
    )


# -- the case page and the lung files -------------------------------------------------------


@pytest.mark.slow
def test_case_page_shows_the_lung_outline_toggle_and_the_share_on_the_lungs(login, predicted):
    prediction = predicted(upload_of("2168a917.jpg"))
    explanation = Explanation.objects.get(image=prediction.image, method="gradcam")
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    page = login(prediction.image.case.owner).get(
        reverse("cases:detail", args=[prediction.image.case_id])
    )
    html = page.content.decode()
    assert "Show lung outline" in html
    outline_url = reverse("cases:lung-file", args=[prediction.image.pk, "outline"])
    assert f'src="{outline_url}"' in html
    assert explanation.mass_in_lungs is not None
    percent = round(100 * explanation.mass_in_lungs)
    assert f"<strong>{percent}%</strong> of this map lies on the lungs." in html
    assert "Lung fields found:" in html


def test_case_page_flags_an_image_whose_lungs_were_not_found(login, predicted, settings):
    settings.CXR_OOD_GATE = settings.CXR_VIEW_CHECK = None
    with Image.open(IMAGES / "2168a917.jpg") as original:
        prediction = predicted(_png(original.rotate(90, expand=True)))
    page = login(prediction.image.case.owner).get(
        reverse("cases:detail", args=[prediction.image.case_id])
    )
    html = page.content.decode()
    assert NOT_FOUND in html
    assert 'role="alert"' in html
    assert "Show lung outline" not in html
    assert "No lung mask for this image" in html
    assert page.context["case"].images.get().latest_prediction.label  # still classified


@pytest.mark.parametrize(
    ("who", "expected"),
    [("owner", 200), ("other_clinician", 404), ("annotator", 403), ("model_admin", 403),
     ("anonymous", 302)],
)  # fmt: skip
@pytest.mark.slow
def test_lung_files_by_id_are_served_to_the_owner_only(
    client, predicted, who, expected, other_clinician, annotator, model_admin
):
    prediction = predicted(upload_of("2168a917.jpg"))
    users = {
        "owner": prediction.image.case.owner,
        "other_clinician": other_clinician,
        "annotator": annotator,
        "model_admin": model_admin,
    }
    if who != "anonymous":
        client.force_login(users[who])
    for kind in ("mask", "outline"):
        response = client.get(reverse("cases:lung-file", args=[prediction.image.pk, kind]))
        assert response.status_code == expected, kind
        if expected == 200:
            assert response["Content-Type"] == "image/png"
            assert response["Cache-Control"] == "private, no-store"
            with Image.open(io.BytesIO(b"".join(response.streaming_content))) as png:
                assert png.size == (prediction.image.width, prediction.image.height)
        if expected == 302:
            assert response.url.startswith(reverse("login"))
    if who == "owner":
        unknown = client.get(reverse("cases:lung-file", args=[prediction.image.pk, "other"]))
        assert unknown.status_code == 404
    if who == "annotator":  # by the image's reference, as the labelling page loads it
        ref = image_ref(prediction.image)
        response = client.get(reverse("cases:reader-lung-file", args=[ref, "outline"]))
        assert response.status_code == 200
        assert response["Content-Type"] == "image/png"

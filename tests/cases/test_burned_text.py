"""Text burned into an X-ray's pixels (a name drawn on the film) holds the image for review.

The check (ml.serving.burned_text) runs Debian's Tesseract in the decoder child; these
tests skip where it is not installed, except in CI (.ci/run installs tesseract-ocr and
sets CXR_REQUIRE_TESSERACT=1, so there they fail instead). The suite runs with the
check off (tests/settings.py); each test here turns it on.
"""

from __future__ import annotations

import io
import os
import shutil
from html import escape

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from apps.accounts.models import AuditEvent
from apps.cases import services
from apps.cases.access import image_ref
from apps.cases.labelling import labelling_queue
from apps.cases.models import CaseImage
from apps.cases.validation import TEXT_HELD, TEXT_UNCHECKED
from tests.conftest import IMAGES, upload_of
from tests.factories import PredictionFactory

FILM = "2168a917.jpg"


@pytest.fixture
def tesseract():
    if shutil.which("tesseract") is None:
        message = "tesseract not installed (apt-get install tesseract-ocr); .ci/run installs it"
        if os.environ.get("CXR_REQUIRE_TESSERACT") == "1":
            pytest.fail(message)  # CI must run these tests, never skip them
        pytest.skip(message)


@pytest.fixture
def text_check(settings):
    settings.CXR_TEXT_CHECK = True


def _film(text: str | None = None) -> Image.Image:
    with Image.open(IMAGES / FILM) as image:
        film = image.convert("L")
    if text:
        size = int(film.height * 0.04)
        font = ImageFont.load_default(size=size)
        ImageDraw.Draw(film).text((size, size), text, fill=255, font=font)
    return film


def _png(film: Image.Image) -> bytes:
    buffer = io.BytesIO()
    film.save(buffer, format="PNG")
    return buffer.getvalue()


def _dicom(film: Image.Image) -> bytes:
    pixels = np.asarray(film, dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _upload(clinician, name: str, content: bytes) -> CaseImage:
    case = services.create_case(owner=clinician, files=[upload_of(name, content)])
    return case.images.get()


@pytest.mark.parametrize(("name", "encode"), [("film.png", _png), ("film.dcm", _dicom)])
@pytest.mark.slow  # Tesseract reads each film (seconds)
def test_a_name_drawn_on_a_film_holds_it_out_of_labelling(
    name, encode, tesseract, text_check, client, clinician, annotator, media_root
):
    image = _upload(clinician, name, encode(_film("DOE^JOHN 1961-04-02")))
    assert image.status == CaseImage.Status.HELD
    assert image.intake_note == TEXT_HELD
    assert image.predictions.count() == 1  # its owner still gets the prediction
    image.predictions.all().delete()
    PredictionFactory(image=image)  # a finished prediction: what the queue asks for
    assert image not in labelling_queue(annotator=annotator)
    client.force_login(annotator)
    assert (
        client.get(reverse("cases:reader-image-file", args=[image_ref(image)])).status_code == 404
    )

    services.release_held_image(image=image, actor=clinician)
    image.refresh_from_db()
    assert image.status == CaseImage.Status.ACCEPTED
    assert image.intake_note.startswith("Released after review")
    assert image in labelling_queue(annotator=annotator)
    assert (
        client.get(reverse("cases:reader-image-file", args=[image_ref(image)])).status_code == 200
    )
    event = AuditEvent.objects.get(action="image.release")
    assert event.after["status"] == "accepted"


@pytest.mark.slow  # Tesseract reads the film (seconds)
def test_the_same_film_without_text_is_accepted(tesseract, text_check, clinician, media_root):
    image = _upload(clinician, "film.png", _png(_film()))
    assert image.status == CaseImage.Status.ACCEPTED
    assert image.intake_note == ""


@pytest.mark.slow
def test_an_image_that_cannot_be_checked_is_held(
    text_check, clinician, media_root, settings, monkeypatch
):
    """Tesseract missing (or failing) while the check is on: held, not waved through."""
    settings.CXR_DECODE_SERVER = False  # a child started with this PATH
    monkeypatch.setenv("PATH", "/nonexistent")
    image = _upload(clinician, "film.png", _png(_film()))
    assert image.status == CaseImage.Status.HELD
    assert image.intake_note == TEXT_UNCHECKED


def test_the_owner_releases_a_held_image_from_the_case_page(client, clinician, media_root):
    image = _upload(clinician, "film.png", _png(_film()))
    CaseImage.objects.filter(pk=image.pk).update(
        status=CaseImage.Status.HELD, intake_note=TEXT_HELD
    )
    client.force_login(clinician)
    page = client.get(reverse("cases:detail", args=[image.case_id])).content.decode()
    assert escape(TEXT_HELD) in page
    assert reverse("cases:image-release", args=[image.pk]) in page
    response = client.post(reverse("cases:image-release", args=[image.pk]))
    assert response.status_code == 302
    image.refresh_from_db()
    assert image.status == CaseImage.Status.ACCEPTED


def test_another_clinician_cannot_release_an_image(client, clinician, other_clinician, media_root):
    image = _upload(clinician, "film.png", _png(_film()))
    CaseImage.objects.filter(pk=image.pk).update(status=CaseImage.Status.HELD)
    client.force_login(other_clinician)
    assert client.post(reverse("cases:image-release", args=[image.pk])).status_code == 404
    image.refresh_from_db()
    assert image.status == CaseImage.Status.HELD


def test_the_upload_page_says_the_check_misses_some_text(client, clinician):
    client.force_login(clinician)
    page = client.get(reverse("cases:create")).content.decode()
    assert "OCR misses some text" in page

"""CMYK and YCCK JPEGs (film scanners and print workflows write them): a real X-ray in a
print colour space is converted to grayscale with a note on the image instead of being
refused, as long as the content checks pass; a colour photograph in CMYK is still refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image, ImageOps

from apps.cases import services
from apps.cases.models import Prediction
from apps.cases.validation import UploadRejected
from cxrplatform.jobs import run_job_now
from ml.data.preprocess import open_image
from tests.conftest import IMAGES, upload_of

pytestmark = pytest.mark.django_db

FIXTURE = "IM-0117-0001.jpeg"  # a paediatric chest X-ray of the fixture set


def _gray() -> Image.Image:
    with Image.open(IMAGES / FIXTURE) as image:
        return image.convert("L")


def film_scan_cmyk(gray: Image.Image) -> Image.Image:
    """How a scanner writes a film in CMYK: the density in K, a faint even tint in CMY."""
    tint = Image.new("L", gray.size, 12)
    return Image.merge("CMYK", [tint, tint, tint, ImageOps.invert(gray)])


def cmyk_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)  # Pillow writes Adobe CMYK (transform 0)
    return buffer.getvalue()


def ycck_jpeg(image: Image.Image) -> bytes:
    """The same CMYK picture coded as YCCK (Adobe transform 2: C, M, Y as YCbCr of their
    complements, K as is). Pillow cannot write YCCK, so its CMYK encoder is given the
    YCC values and the Adobe marker's transform byte is set to 2; libjpeg then decodes
    the file back to CMYK, as it does any YCCK JPEG."""
    cmyk = np.asarray(image, dtype=np.float64)
    r, g, b = 255 - cmyk[..., 0], 255 - cmyk[..., 1], 255 - cmyk[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    coded = np.clip(np.stack([y, cb, cr, cmyk[..., 3]], -1).round(), 0, 255).astype(np.uint8)
    data = bytearray(cmyk_jpeg(Image.fromarray(coded, "CMYK")))
    adobe = data.index(b"Adobe")
    assert data[adobe + 11] == 0  # "Adobe", version (2), flags0 (2), flags1 (2), transform
    data[adobe + 11] = 2
    return bytes(data)


def test_the_ycck_fixture_really_is_ycck_and_decodes_to_the_picture():
    gray = _gray()
    with Image.open(io.BytesIO(ycck_jpeg(film_scan_cmyk(gray)))) as decoded:
        assert decoded.mode == "CMYK"
        assert decoded.info["adobe_transform"] == 2
        shown = np.asarray(decoded.convert("L"), dtype=np.float64)
    assert np.abs(shown - np.asarray(gray, dtype=np.float64) * (243 / 255)).mean() < 3


@pytest.mark.parametrize(
    ("make", "space"), [(cmyk_jpeg, "CMYK"), (ycck_jpeg, "YCCK")], ids=["cmyk", "ycck"]
)
@pytest.mark.slow
def test_an_xray_in_a_print_colour_space_is_stored_as_grayscale_with_a_note(
    make, space, clinician, login, production_model, django_capture_on_commit_callbacks
):
    gray = _gray()
    content = make(film_scan_cmyk(gray))
    with django_capture_on_commit_callbacks(execute=False):
        case = services.create_case(owner=clinician, files=[upload_of("scan.jpg", content)])
    image = case.images.get()
    assert image.source_format == "jpeg"
    assert image.intake_note.startswith(f"The JPEG was in {space} colour")
    assert image.intake_note.endswith("it was converted to grayscale.")
    with image.file.open("rb") as fh:
        data = fh.read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    stored = open_image(io.BytesIO(data))
    assert stored.mode == "L"
    pixels = np.asarray(stored, dtype=np.float64)
    # The film's densities, less the faint tint the scan added (12/255 of ink in C, M, Y).
    assert np.abs(pixels - np.asarray(gray, dtype=np.float64) * (243 / 255)).mean() < 3

    # The clinician reads the note on the case page and in the API.
    html = login(clinician).get(reverse("cases:detail", args=[case.pk])).content.decode()
    assert f"The JPEG was in {space} colour" in html
    body = login(clinician).get(f"/api/v1/images/{image.pk}/").json()
    assert body["intake_note"] == image.intake_note

    # It is classified like the same picture uploaded in grayscale.
    prediction = Prediction.objects.get(image=image)
    with django_capture_on_commit_callbacks(execute=False):
        run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.status == "done", prediction.error
    same = Image.fromarray(np.round(np.asarray(gray, np.float64) * 243 / 255).astype(np.uint8))
    buffer = io.BytesIO()
    same.save(buffer, format="PNG")
    upload = upload_of("gray.png", buffer.getvalue(), "image/png")
    with django_capture_on_commit_callbacks(execute=False):
        original = services.create_case(owner=clinician, files=[upload])
    reference = Prediction.objects.get(image__case=original)
    with django_capture_on_commit_callbacks(execute=False):
        run_job_now(Prediction, reference.pk)
    reference.refresh_from_db()
    assert reference.image.intake_note == ""  # a grayscale upload gets no note
    assert prediction.label == reference.label
    for name, p in reference.probabilities.items():
        assert prediction.probabilities[name] == pytest.approx(p, abs=0.02)


@pytest.mark.slow
def test_a_colour_photograph_in_cmyk_is_still_refused_by_the_content_check(clinician):
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("china.jpg")).convert("CMYK")
    with pytest.raises(UploadRejected) as excinfo:
        services.create_case(owner=clinician, files=[upload_of("photo.jpg", cmyk_jpeg(photo))])
    assert excinfo.value.status == 400
    assert "not a chest X-ray" in excinfo.value.problem or "does not look like" in (
        excinfo.value.problem
    )

import io

import pytest
from django.db import IntegrityError
from PIL import Image

from apps.cases import services
from apps.cases.models import Case, CaseImage, Prediction
from apps.cases.validation import UploadRejected
from tests.conftest import IMAGES, stored_files, upload_of


def _png_bytes(size=(200, 180), mode="L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=90).save(buffer, format="PNG")
    return buffer.getvalue()


def _fixture_png(name: str) -> bytes:
    buffer = io.BytesIO()
    with Image.open(IMAGES / name) as image:
        image.convert("L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_create_case_stores_every_image_with_its_metadata_and_queues_a_prediction(
    clinician, media_root, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        case = services.create_case(
            owner=clinician,
            files=[
                upload_of("2168a917.jpg"),
                upload_of("scan.png", _fixture_png("IM-0117-0001.jpeg"), "image/png"),
            ],
            patient_ref="  PSEUDO-77 ",
            notes="fever 3 days",
        )
    assert case.owner == clinician
    assert case.patient_ref == "PSEUDO-77"
    images = list(case.images.order_by("pk"))
    assert [i.source_format for i in images] == ["jpeg", "png"]
    with Image.open(IMAGES / "2168a917.jpg") as original:
        assert (images[0].width, images[0].height) == original.size
    with Image.open(IMAGES / "IM-0117-0001.jpeg") as original:
        assert (images[1].width, images[1].height) == original.size
    import hashlib

    # Stored under a random name: the uploaded file name may carry identifiers.
    assert images[0].file.name
    assert "2168a917" not in images[0].file.name
    assert len(stored_files(media_root)) == 2
    # Stored re-encoded: a PNG of the decoded pixels, never the bytes as sent.
    with images[0].file.open("rb") as fh:
        stored = fh.read()
    assert images[0].sha256 == hashlib.sha256(stored).hexdigest()
    assert stored != (IMAGES / "2168a917.jpg").read_bytes()
    with Image.open(io.BytesIO(stored)) as png, Image.open(IMAGES / "2168a917.jpg") as original:
        assert png.format == "PNG"
        assert png.tobytes() == original.convert(png.mode).tobytes()
    assert [p.status for p in Prediction.objects.filter(image__case=case)] == ["pending", "pending"]
    # One classification job per image, queued only after commit.
    assert len(callbacks) == 2


def _assert_nothing_stored(media_root):
    assert Case.objects.count() == 0
    assert CaseImage.objects.count() == 0
    assert Prediction.objects.count() == 0
    assert stored_files(media_root) == []


@pytest.mark.parametrize(
    ("name", "content", "status", "message"),
    [
        ("empty.png", b"", 400, "empty.png: the file is empty."),
        (
            "notes.jpg",
            b"this is a text file, not an X-ray\n" * 20,
            415,
            "notes.jpg: this is not an image file",
        ),
        (
            "tiny.png",
            _png_bytes((40, 300)),
            400,
            "tiny.png: the image is 40x300 pixels; each side must be at least 64.",
        ),
    ],
)
def test_bad_files_are_refused_with_a_message_naming_the_file(
    clinician, media_root, name, content, status, message
):
    with pytest.raises(UploadRejected) as excinfo:
        services.create_case(owner=clinician, files=[upload_of(name, content)])
    assert str(excinfo.value).startswith(message)
    assert excinfo.value.status == status
    _assert_nothing_stored(media_root)


def test_truncated_jpeg_is_refused(clinician, media_root):
    data = (IMAGES / "2168a917.jpg").read_bytes()
    with pytest.raises(UploadRejected, match=r"cut\.jpg: the image is truncated or corrupt"):
        services.create_case(owner=clinician, files=[upload_of("cut.jpg", data[: len(data) // 2])])
    _assert_nothing_stored(media_root)


def test_gif_is_refused_as_unsupported_media_type(clinician, media_root):
    buffer = io.BytesIO()
    Image.new("L", (128, 128)).save(buffer, format="GIF")
    with pytest.raises(UploadRejected, match="GIF images are not accepted") as excinfo:
        services.create_case(owner=clinician, files=[upload_of("x.gif", buffer.getvalue())])
    assert excinfo.value.status == 415
    _assert_nothing_stored(media_root)


def test_oversize_upload_is_refused_with_413(clinician, media_root, settings):
    settings.CXR_MAX_UPLOAD_BYTES = 2048
    with pytest.raises(UploadRejected, match="the limit is 2048 bytes") as excinfo:
        services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    assert excinfo.value.status == 413
    _assert_nothing_stored(media_root)


def test_decompression_bomb_is_refused_before_decoding(clinician, media_root, settings):
    settings.CXR_MAX_IMAGE_PIXELS = 100_000
    bomb = _png_bytes((2000, 2000))  # compresses to a few kB, 4 Mpx when decoded
    assert len(bomb) < 20_000
    with pytest.raises(UploadRejected, match="2000x2000 pixels; the limit is 100,000") as excinfo:
        services.create_case(owner=clinician, files=[upload_of("bomb.png", bomb)])
    assert excinfo.value.status == 413
    _assert_nothing_stored(media_root)


def test_one_bad_file_among_several_stores_none_of_them(clinician, media_root):
    with pytest.raises(UploadRejected, match=r"broken\.png"):
        services.create_case(
            owner=clinician,
            files=[
                upload_of("2168a917.jpg"),
                upload_of("broken.png", b"\x89PNG\r\n\x1a\n garbage"),
            ],
        )
    _assert_nothing_stored(media_root)


def test_every_refused_file_is_named_with_its_own_problem(clinician, media_root):
    with pytest.raises(UploadRejected) as excinfo:
        services.create_case(
            owner=clinician,
            files=[
                upload_of("empty.png", b""),
                upload_of("2168a917.jpg"),
                upload_of("notes.png", b"just some text, not a picture"),
            ],
        )
    rejections = excinfo.value.rejections
    assert [r.filename for r in rejections] == ["empty.png", "notes.png"]
    assert "empty" in rejections[0].problem
    assert "1 more file" in str(excinfo.value)
    _assert_nothing_stored(media_root)


def test_failure_after_files_were_written_removes_them(clinician, media_root, monkeypatch):
    """A database error half-way through a multi-image upload leaves no orphan file."""
    real_create = Prediction.objects.create
    calls = []

    def fail_on_second(**kwargs):
        calls.append(kwargs)
        if len(calls) == 2:
            raise IntegrityError("simulated failure while writing the second image")
        return real_create(**kwargs)

    monkeypatch.setattr(Prediction.objects, "create", fail_on_second)
    with pytest.raises(IntegrityError):
        services.create_case(
            owner=clinician, files=[upload_of("2168a917.jpg"), upload_of("5f619d7e.jpg")]
        )
    _assert_nothing_stored(media_root)


def test_case_without_images_is_refused(clinician):
    with pytest.raises(UploadRejected, match="choose at least one image"):
        services.create_case(owner=clinician, files=[])


def test_too_many_images_are_refused(clinician, settings, media_root):
    settings.CXR_MAX_IMAGES_PER_CASE = 2
    files = [upload_of(name) for name in ("2168a917.jpg", "5f619d7e.jpg", "4d98e1de.jpg")]
    with pytest.raises(UploadRejected, match="3 images; a case holds at most 2"):
        services.create_case(owner=clinician, files=files)
    _assert_nothing_stored(media_root)

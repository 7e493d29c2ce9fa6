"""Stored identifying data: what the platform keeps of an upload,
what it serves back, and what it logs, hold none of the identifiers planted in it.

- PNG/JPEG uploads are stored as a re-encoded copy of their decoded pixels: no text
  chunks, EXIF, XMP, comments or ICC profiles, neither stored nor served.
- DICOM uploads keep only an allow-list of attributes: every attribute of PS3.15
  Table E.1-1 (tests/fixtures/dicom/ps3.15-table-e1-1.tsv) is absent or replaced;
  times shift with dates; uploads without a PatientID get a random shift of their own.
- Logs name uploads by a reference (a hash prefix), never by file name or header value.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from django.core.files.base import ContentFile
from django.http import StreamingHttpResponse
from django.urls import reverse
from PIL import Image, PngImagePlugin
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from rest_framework.test import APIClient

from apps.cases import services
from apps.cases.access import image_ref
from apps.cases.models import Case, CaseImage
from apps.cases.validation import UploadRejected
from ml.data.dicom import read_dataset, to_unit_gray
from tests.cases.test_input_safety import FIXTURE, make_dicom
from tests.conftest import FIXTURES, IMAGES, stored_files, upload_of
from tests.factories import PredictionFactory

NAME = "DOE^JOHN"
MRN = "MRN1234567"
SECRETS = ["DOE", "JOHN", MRN]
TABLE_E11 = FIXTURES / "dicom" / "ps3.15-table-e1-1.tsv"


def _xray() -> Image.Image:
    with Image.open(IMAGES / FIXTURE) as image:
        return image.convert("L")


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _post_case(client, name: str, content: bytes, content_type: str = "image/png"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        "/api/v1/cases/",
        {"images": [SimpleUploadedFile(name, content, content_type=content_type)]},
        format="multipart",
    )


def _assert_no_secret(data: bytes, where: str) -> None:
    for secret in SECRETS:
        assert secret.encode() not in data, f"{secret!r} in {where}"


def _assert_bare_image(data: bytes, where: str) -> Image.Image:
    """A PNG that carries pixels only: no text, EXIF, XMP, comment or ICC profile."""
    _assert_no_secret(data, where)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG", where
    assert not {"exif", "xmp", "comment", "icc_profile"} & set(image.info), (where, image.info)
    assert isinstance(image, PngImagePlugin.PngImageFile), where
    assert image.text == {}, where
    chunks = {c for c, _, _ in _png_chunks(data)}
    assert chunks <= {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}, (where, chunks)
    return image


def _png_chunks(data: bytes):
    position = 8
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        yield kind, position, length
        position += 12 + length


# -- PNG / JPEG: stored and served re-encoded ----------------------------------------


def _png_with_metadata() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", NAME)  # tEXt
    info.add_text("Comment", f"MRN {MRN}", zip=True)  # zTXt: compressed, so no plain bytes
    info.add_itxt("Description", f"{NAME} {MRN}")  # iTXt
    exif = Image.Exif()
    exif[0x010E] = f"{NAME} {MRN}"  # ImageDescription
    buffer = io.BytesIO()
    _xray().save(buffer, format="PNG", pnginfo=info, exif=exif, xmp=f"<x>{NAME}</x>".encode())
    return buffer.getvalue()


def _jpeg_with_metadata() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = f"{NAME} {MRN}"  # ImageDescription
    exif[0x013B] = NAME  # Artist
    buffer = io.BytesIO()
    _xray().save(
        buffer,
        format="JPEG",
        quality=92,
        exif=exif,
        comment=f"Patient: {NAME}".encode(),
        xmp=f"<x>{NAME} {MRN}</x>".encode(),
    )
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "content_type"),
    [
        ("DOE_JOHN_MRN1234567.png", _png_with_metadata, "image/png"),
        ("DOE_JOHN_MRN1234567.jpg", _jpeg_with_metadata, "image/jpeg"),
    ],
)
@pytest.mark.slow
def test_picture_metadata_is_neither_stored_nor_served_to_annotators(
    clinician, annotator, media_root, login, name, make, content_type
):
    content = make()
    # The planted text is really in the upload (tEXt, EXIF, XMP or the JPEG comment).
    assert NAME.encode() in content
    with Image.open(io.BytesIO(content)) as sent:
        decoded = np.asarray(sent.convert("L"))
    response = _post_case(_api(clinician), name, content, content_type)
    assert response.status_code == 201, response.content
    image = CaseImage.objects.get()
    # Every stored file: the picture only, pixel for pixel what was decoded.
    files = stored_files(media_root)
    assert len(files) == 1
    stored = _assert_bare_image(files[0].read_bytes(), "the stored file")
    assert np.array_equal(np.asarray(stored.convert("L")), decoded)
    assert image.sha256 != __import__("hashlib").sha256(content).hexdigest()

    # What an annotator is served, through the web page and the API.
    PredictionFactory(image=image)  # annotators see images whose prediction is done
    web = login(annotator).get(reverse("cases:reader-image-file", args=[image_ref(image)]))
    api = _api(annotator).get(f"/api/v1/labelling/images/{image_ref(image)}/file/")
    for response, where in ((web, "the web image"), (api, "the API image")):
        assert response.status_code == 200, where
        assert response["Content-Type"] == "image/png", where
        assert isinstance(response, StreamingHttpResponse), where
        assert isinstance(response.streaming_content, Iterator), where
        served = b"".join(response.streaming_content)
        _assert_bare_image(served, where)
        assert served == files[0].read_bytes()


def test_sixteen_bit_and_transparent_pngs_keep_what_the_model_sees(clinician, media_root):
    """Re-encoding keeps 16-bit depth and gives what to_unit_gray saw at upload."""
    from ml.data.preprocess import open_image, to_unit_gray

    deep = (np.asarray(_xray(), dtype=np.uint16) * 200 + 300).astype(np.uint16)
    rgba = _xray().convert("RGBA")
    ramp = (np.arange(rgba.width) % 255).astype(np.uint8)
    rgba.putalpha(Image.fromarray(np.tile(ramp, (rgba.height, 1))))
    for name, picture in (("deep.png", Image.fromarray(deep)), ("alpha.png", rgba)):
        buffer = io.BytesIO()
        info = PngImagePlugin.PngInfo()
        info.add_text("Patient", NAME)
        picture.save(buffer, format="PNG", pnginfo=info)
        expected = to_unit_gray(open_image(io.BytesIO(buffer.getvalue())))
        case = services.create_case(owner=clinician, files=[upload_of(name, buffer.getvalue())])
        with case.images.get().file.open("rb") as fh:
            data = fh.read()
        stored = _assert_bare_image(data, name)
        np.testing.assert_allclose(to_unit_gray(stored), expected, atol=1e-6)
        if name == "deep.png":
            assert stored.mode.startswith("I")  # still 16-bit


# -- DICOM: allow-list, checked against PS3.15 Table E.1-1 -------------------------------


def _table_e11() -> list[tuple[int | None, str, str, str]]:
    """(tag or None for masked rows, tag text, action, name) per row of the fixture."""
    rows = []
    for line in TABLE_E11.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        text, action, name = line.split("\t")
        hexes = text.strip("()").replace(",", "")
        tag = int(hexes, 16) if re.fullmatch(r"[0-9A-F]{8}", hexes) else None
        rows.append((tag, text, action, name))
    return rows


def test_the_table_fixture_is_the_whole_table():
    rows = _table_e11()
    assert len(rows) == 656
    assert len({text for _, text, _, _ in rows}) == len(rows)
    names = {name for _, _, _, name in rows}
    for name in ("Clinical Trial Subject ID", "Station Name", "Detector ID", "Reason for Visit",
                 "Study Time", "Performed Station AE Title", "Patient ID"):  # fmt: skip
        assert name in names


def _planted(index: int, tag: int, vr: str):
    """A valid value of ``vr`` that is unique to this attribute."""
    marker = f"PHI{index:04d}"
    moment = dt.datetime(1950, 1, 1, 8, 0, 0) + dt.timedelta(days=index, seconds=index * 13)
    values = {
        "UR": f"urn:{marker}:DOE:JOHN",
        "PN": f"{marker}^{NAME}",
        "DA": moment.strftime("%Y%m%d"),
        "TM": moment.strftime("%H%M%S"),
        "DT": moment.strftime("%Y%m%d%H%M%S"),
        "AS": f"{index % 999:03d}Y",
        "UI": f"1.2.826.0.1.3680043.10.1.{index}.{tag}",
        "DS": f"{1000 + index}.5",
        "IS": str(5000 + index),
        "AT": 0x00100010,
    }
    values |= dict.fromkeys(("AE", "CS", "SH"), marker)
    values |= dict.fromkeys(("LO", "LT", "ST", "UT", "UC"), f"{marker} {NAME}")
    values |= dict.fromkeys(("US", "UL", "UV"), 40000 + index)
    values |= dict.fromkeys(("SS", "SL", "SV"), -(2000 + index))
    values |= dict.fromkeys(("FL", "FD"), 1000.25 + index)
    values |= dict.fromkeys(
        ("OB", "OW", "OD", "OF", "OL", "OV", "UN"), f"{marker}{NAME}".encode().ljust(16, b"\0")
    )
    return values[vr]


def _plant_table_e11(ds: Dataset) -> dict[int, object]:
    """Set every attribute of Table E.1-1 (and an overlay, a curve and a private tag)."""
    planted: dict[int, object] = {}
    for index, (tag, _, _, _) in enumerate(_table_e11()):
        if tag is None:
            continue
        group = tag >> 16
        if group == 0x0000:
            continue  # command group: not part of a stored dataset
        vr = dictionary_VR(tag).split(" or ")[0] if keyword_for_tag(tag) else "LO"
        if vr == "SQ":
            item = Dataset()
            item.PersonName = f"PHI{index:04d}^{NAME}"  # (0040,A123)
            item.add_new(0x00080104, "LO", f"PHI{index:04d} {MRN}")  # CodeMeaning
            value = Sequence([item])
        else:
            value = _planted(index, tag, vr)
        if group == 0x0002:
            ds.file_meta[tag] = DataElement(tag, vr, value)
        else:
            ds[tag] = DataElement(tag, vr, value)
        planted[tag] = value
    ds.add_new(0x60003000, "OW", b"PHIOVERLAY" + NAME.encode() + b"\0\0")
    ds.add_new(0x60004000, "LT", f"PHIOVERLAYCOMMENT {NAME}")
    ds.add_new(0x50003000, "OW", b"PHICURVE" + NAME.encode())
    block = ds.private_block(0x0011, "ACME PHI", create=True)
    block.add_new(0x01, "LO", f"PHIPRIVATE {MRN}")
    return planted


def _dicom_with_table_e11(**tags) -> tuple[bytes, dict[int, object]]:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(**tags)))
    planted = _plant_table_e11(ds)
    ds.PatientID = MRN
    ds.PatientName = NAME
    for keyword, value in tags.items():  # what the test needs kept as it is
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), planted


def test_every_table_e11_attribute_is_absent_or_replaced(clinician, media_root):
    content, planted = _dicom_with_table_e11()
    original = pydicom.dcmread(io.BytesIO(content))
    assert str(original.ClinicalTrialSubjectID).startswith("PHI")  # really planted
    case = services.create_case(owner=clinician, files=[upload_of("study.dcm", content)])
    data = case.images.get().original.read()
    ds = pydicom.dcmread(io.BytesIO(data))
    survivors = []
    for tag, value in planted.items():
        container = ds.file_meta if tag >> 16 == 0x0002 else ds
        for element in [container[tag]] if tag in container else []:
            if element.value == value or (element.VR == "SQ" and len(element.value)):
                survivors.append(f"{pydicom.tag.Tag(tag)} {element.keyword}={element.value!r}")
    assert survivors == []
    # Replaced, not emptied: the attributes the platform keeps carry new values.
    assert ds.PatientID == ds.PatientName == case.patient_ref
    assert case.patient_ref.startswith("PX-")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate"):
        assert ds.get(keyword), keyword
    # Nothing planted survives anywhere in the file, in any attribute or sequence.
    for marker in (b"PHI", NAME.encode(), MRN.encode(), b"DOE", b"ACME"):
        assert marker not in data, marker
    # Overlays, curves and private attributes are gone.
    assert not any(element.tag.is_private for element in ds.iterall())
    assert not any(0x5000 <= element.tag.group <= 0x60FF for element in ds.iterall())
    # Only allow-listed attributes are left.
    from apps.cases.deidentify import KEEP

    assert {element.keyword for element in ds} <= KEEP
    # The stored file decodes to the image that was validated.
    np.testing.assert_array_equal(to_unit_gray(ds), to_unit_gray(read_dataset(content)))


def test_the_attributes_the_platform_reads_are_kept(clinician, media_root):
    content, _ = _dicom_with_table_e11(
        BodyPartExamined="CHEST",
        ViewPosition="PA",
        WindowCenter=2047.5,
        WindowWidth=4096.0,
        PixelSpacing=[0.143, 0.143],
        ImagerPixelSpacing=[0.15, 0.15],
    )
    case = services.create_case(owner=clinician, files=[upload_of("x.dcm", content)])
    ds = pydicom.dcmread(io.BytesIO(case.images.get().original.read()))
    assert ds.Modality == "DX"
    assert ds.BodyPartExamined == "CHEST"
    assert ds.ViewPosition == "PA"
    assert ds.SOPClassUID == pydicom.dcmread(io.BytesIO(content)).SOPClassUID
    assert (ds.WindowCenter, ds.WindowWidth) == (2047.5, 4096.0)
    assert [float(v) for v in ds.PixelSpacing] == [0.143, 0.143]
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.15, 0.15]
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == [
        "113100",
        "113107",
    ]


def _moment(ds: Dataset, date: str, time: str) -> dt.datetime:
    return dt.datetime.strptime(str(ds[date].value) + str(ds[time].value)[:6], "%Y%m%d%H%M%S")


def _study(patient_id: str) -> bytes:
    return make_dicom(
        PatientID=patient_id,
        StudyDate="20230417", StudyTime="101112", SeriesDate="20230417", SeriesTime="103000",
        AcquisitionDateTime="20230417102000", ContentDate="20230418", ContentTime="000500",
    )  # fmt: skip


def _stored(case: Case) -> Dataset:
    return pydicom.dcmread(io.BytesIO(case.images.get().original.read()))


def test_times_shift_with_dates_by_one_offset_per_patient(clinician, media_root):
    first = _stored(services.create_case(owner=clinician, files=[upload_of("a.dcm", _study(MRN))]))
    again = _stored(services.create_case(owner=clinician, files=[upload_of("b.dcm", _study(MRN))]))
    truth = dt.datetime(2023, 4, 17, 10, 11, 12)
    offset = truth - _moment(first, "StudyDate", "StudyTime")
    assert dt.timedelta(days=1) <= offset <= dt.timedelta(days=3651)
    assert offset % dt.timedelta(days=1), "the time of day must move too"
    assert first.StudyTime != "101112"
    # Every date and time of the image moves by the same offset ...
    assert truth.replace(minute=30, second=0) - _moment(first, "SeriesDate", "SeriesTime") == offset
    assert dt.datetime(2023, 4, 18, 0, 5) - _moment(first, "ContentDate", "ContentTime") == offset
    acquired = dt.datetime.strptime(str(first.AcquisitionDateTime)[:14], "%Y%m%d%H%M%S")
    assert truth.replace(minute=20, second=0) - acquired == offset
    # ... and every upload of the same patient by the same one (follow-ups keep their order).
    assert _moment(again, "StudyDate", "StudyTime") == _moment(first, "StudyDate", "StudyTime")


@pytest.mark.slow
def test_uploads_without_patient_id_get_a_random_shift_each(clinician, media_root):
    moments = set()
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        case = services.create_case(owner=clinician, files=[upload_of(name, _study(""))])
        ds = _stored(case)
        assert case.patient_ref == ""
        assert ds.PatientID == ""
        moments.add(_moment(ds, "StudyDate", "StudyTime"))
    assert len(moments) == 3


# -- Logs -----------------------------------------------------------------------------


@pytest.mark.slow
def test_no_identifier_reaches_the_logs(clinician, media_root, caplog):
    client = _api(clinician)
    refused_blank = io.BytesIO()
    Image.new("L", (300, 300), 128).save(refused_blank, format="PNG")
    lateral = (IMAGES / "lateral" / "000002-11-b.jpg").read_bytes()
    uploads = [
        ("DOE_JOHN_MRN1234567.dcm", make_dicom(PatientID=MRN, PatientName=NAME), 201),
        ("DOE_JOHN_MRN1234567.png", _png_with_metadata(), 201),
        ("DOE_JOHN_MRN1234567_blank.png", refused_blank.getvalue(), 400),  # OOD gate
        ("DOE_JOHN_MRN1234567_lat.jpg", lateral, 400),  # view check
        ("DOE_JOHN_MRN1234567_lat.dcm", make_dicom(PatientID=MRN, ViewPosition="LL"), 400),
        ("DOE_JOHN_MRN1234567_cut.dcm", make_dicom(PatientID=MRN)[:-5000], 400),
    ]
    caplog.set_level(logging.DEBUG)  # everything, from every logger, while uploading
    for name, content, status in uploads:
        response = _post_case(client, name, content)
        assert response.status_code == status, (name, response.content)
    text = "\n".join(
        f"{record.getMessage()} {record.exc_text or ''} {record.stack_info or ''}"
        for record in caplog.records
    )
    assert "DICOM upload" in text  # the upload is still logged, by its reference
    for secret in SECRETS:
        assert secret not in text
    assert re.search(r"upload [0-9a-f]{12}", text)


def test_unexpected_errors_are_logged_without_their_message(caplog):
    from apps.cases.validation import _log_unexpected

    try:
        raise ValueError(f"Invalid value for VR PN: {NAME!r}")
    except ValueError as exc:
        with caplog.at_level(logging.DEBUG):
            _log_unexpected("DICOM error", "0123456789ab", exc)
    assert "unexpected DICOM error for upload 0123456789ab: ValueError" in caplog.text
    assert "test_stored_phi.py" in caplog.text  # the traceback is there
    assert "DOE" not in caplog.text


def test_a_rejection_names_the_file_to_the_uploader_only(clinician, media_root, caplog):
    lateral = (IMAGES / "lateral" / "000002-11-b.jpg").read_bytes()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UploadRejected) as excinfo:
        services.create_case(
            owner=clinician, files=[upload_of("DOE_JOHN_MRN1234567_lat.jpg", lateral)]
        )
    assert str(excinfo.value).startswith("DOE_JOHN_MRN1234567_lat.jpg: ")
    assert "DOE" not in caplog.text


# -- Files stored before this change ----------------------------------------------------


def test_reencode_stored_images_converts_what_was_stored_before(clinician, media_root):
    from django.core.management import call_command

    from tests.factories import CaseImageFactory

    # As the platform stored them before: the JPEG as sent, and a deny-list DICOM.
    legacy_jpeg = _jpeg_with_metadata()
    picture = CaseImageFactory(case__owner=clinician)
    picture.file.name = "cases/2025/01/legacy.jpg"
    (media_root / "cases/2025/01").mkdir(parents=True)
    (media_root / picture.file.name).write_bytes(legacy_jpeg)
    picture.save()
    old = pydicom.dcmread(io.BytesIO(make_dicom(PatientID="PX-LEGACY", ClinicalTrialSubjectID=MRN)))
    old.DeidentificationMethod = "PS3.15 Basic Profile, Modified Dates option (cxrplatform v1)"
    buffer = io.BytesIO()
    old.save_as(buffer, enforce_file_format=True)
    dicom = CaseImageFactory(case__owner=clinician, source_format="dicom")
    dicom.original.save("upload", ContentFile(buffer.getvalue()))
    assert picture.content_type == "image/jpeg"  # served as stored until converted

    out = io.StringIO()
    call_command("reencode_stored_images", stdout=out)
    assert "2 converted, 0 already done, 0 failed" in out.getvalue()
    picture.refresh_from_db()
    dicom.refresh_from_db()
    assert not (media_root / "cases/2025/01/legacy.jpg").exists()
    with picture.file.open("rb") as fh:
        data = fh.read()
    stored = _assert_bare_image(data, "the converted picture")
    with Image.open(io.BytesIO(legacy_jpeg)) as sent:
        assert stored.tobytes() == sent.convert("L").tobytes()
    assert picture.content_type == "image/png"
    assert picture.sha256 == __import__("hashlib").sha256(data).hexdigest()
    ds = pydicom.dcmread(io.BytesIO(dicom.original.read()))
    assert "ClinicalTrialSubjectID" not in ds
    assert MRN.encode() not in dicom.original.read()
    assert ds.PatientID == "PX-LEGACY"  # the pseudonym stays

    out = io.StringIO()
    call_command("reencode_stored_images", stdout=out)  # idempotent
    assert "0 converted, 2 already done, 0 failed" in out.getvalue()

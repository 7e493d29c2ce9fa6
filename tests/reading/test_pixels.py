"""The viewer's DICOM data: the stored (de-identified) file's modality values for true
window/level, its header without identifiers, its download, and CT areas in mm²."""

from __future__ import annotations

import numpy as np
import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.reading import pixels
from ml.data.dicom import read_dataset

pytestmark = pytest.mark.django_db


def test_values_are_the_16_bit_originals_not_the_8_bit_rendition(
    client, radiologist, owner, dicom_study
):
    case = dicom_study(owner, bits=16)
    image = case.images.get()
    data, meta = pixels.values(image)
    values = np.frombuffer(data, dtype="<f4").reshape(meta["height"], meta["width"])
    with image.original.open("rb") as handle:
        stored = read_dataset(handle.read()).pixel_array
    assert np.array_equal(values, stored.astype(np.float32))
    assert values.max() > 255  # 16-bit range, not the 8-bit PNG's
    assert meta["bits_stored"] == 16
    # Intake's de-identification keeps the Pixel Spacing (the fixture's 0.2 mm).
    assert meta["pixel_spacing"] == [0.2, 0.2]
    assert "chest" in meta["presets"]

    client.force_login(radiologist)
    response = client.get(reverse("reading:values", args=[image.pk]))
    assert response.status_code == 200
    assert len(response.content) == meta["width"] * meta["height"] * 4


def test_header_is_the_deidentified_one(client, radiologist, owner, dicom_study):
    case = dicom_study(owner)
    image = case.images.get()
    client.force_login(radiologist)
    meta = client.get(reverse("reading:meta", args=[image.pk])).json()
    text = str(meta["header"])
    assert "Rows" in text
    assert "DOE^JANE" not in text
    assert "MRN-4711-SECRET" not in text
    download = client.get(reverse("reading:dicom", args=[image.pk]))
    assert download.status_code == 200
    assert b"DICM" in b"".join(download.streaming_content)[:200]
    assert "attachment" in download["Content-Disposition"]
    assert AuditEvent.objects.filter(action="download.dicom", target_id=str(image.pk)).exists()


def test_a_png_upload_has_no_dicom_data(client, radiologist, owner, study):
    image = study(owner).images.get()
    client.force_login(radiologist)
    assert client.get(reverse("reading:meta", args=[image.pk])).status_code == 404
    assert client.get(reverse("reading:dicom", args=[image.pk])).status_code == 404
    assert client.get(reverse("reading:image-file", args=[image.pk])).status_code == 200


def test_ct_presets_are_lung_and_mediastinum(owner, media_root):
    from django.core.files.base import ContentFile

    from tests.ct_uploads import ct_dicom
    from tests.factories import CaseFactory, CaseImageFactory
    from tests.reading.conftest import stored_dicom

    case = CaseFactory(owner=owner, modality="ct")
    dicom = stored_dicom(ct_dicom().read())
    image = CaseImageFactory(case=case, original=ContentFile(dicom, name="ct.dcm"))
    data, meta = pixels.values(image)
    assert meta["presets"]["lung"] == [-600.0, 1500.0]
    assert meta["presets"]["mediastinum"] == [40.0, 400.0]
    assert meta["units"] == "HU"
    values = np.frombuffer(data, dtype="<f4")
    assert values.min() >= -1024
    assert values.min() < -500  # air in HU, after the rescale

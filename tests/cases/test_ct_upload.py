"""CT slices at upload: routing by mark and DICOM header, the lung window, and every
refusal (an X-ray marked CT, a CT slice marked X-ray, a 3-D volume, a mixed upload)
leaving nothing stored."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from apps.cases import services
from apps.cases.models import Case, CaseImage, Prediction, Segmentation
from apps.cases.validation import UploadRejected
from ml.ct.modality import CT_HINT, CT_LOOKS_LIKE_XRAY, NOT_A_CT_SLICE, XRAY_LOOKS_LIKE_CT
from tests.conftest import stored_files, upload_of
from tests.ct_uploads import (
    CT_SLICE,
    CT_SLICE_2,
    MEDSEG_SLICE,
    abdomen_like_upload,
    ct_dicom,
    ct_upload,
    hounsfield_of,
    lung_window_rendition,
)

pytestmark = pytest.mark.django_db


def _stored_pixels(image: CaseImage) -> np.ndarray:
    with image.file.open("rb") as fh:
        return np.asarray(Image.open(io.BytesIO(fh.read())).convert("L"))


def _refused(clinician, media_root, files, **kwargs) -> UploadRejected:
    with pytest.raises(UploadRejected) as caught:
        services.create_case(owner=clinician, files=files, **kwargs)
    assert Case.objects.count() == 0
    assert CaseImage.objects.count() == 0
    assert stored_files(media_root) == []
    return caught.value


def test_ct_slices_marked_ct_make_a_ct_case_with_one_segmentation_each(clinician):
    case = services.create_case(
        owner=clinician,
        files=[ct_upload(CT_SLICE), ct_upload(CT_SLICE_2), ct_upload(MEDSEG_SLICE)],
        modality="ct",
    )
    assert case.modality == "ct"
    assert case.images.count() == 3
    assert Segmentation.objects.filter(image__case=case, status="pending").count() == 3
    assert not Prediction.objects.filter(image__case=case).exists()
    first = case.images.order_by("pk").first()
    assert first is not None
    assert (first.width, first.height, first.source_format) == (256, 256, "jpeg")
    assert case.status == "processing"
    assert Case.objects.with_status().get(pk=case.pk).derived_status == "processing"


def test_a_chest_xray_marked_ct_is_refused_and_nothing_is_stored(clinician, media_root):
    refusal = _refused(clinician, media_root, [upload_of("2168a917.jpg")], modality="ct")
    assert refusal.filename == "2168a917.jpg"
    assert refusal.problem == CT_LOOKS_LIKE_XRAY
    assert refusal.status == 400


@pytest.mark.parametrize("path", [MEDSEG_SLICE, CT_SLICE], ids=["medseg", "zenodo"])
def test_a_ct_slice_marked_xray_is_refused_and_nothing_is_stored(clinician, media_root, path):
    """Refused with the modality check's message, or the gate's with its CT hint."""
    refusal = _refused(clinician, media_root, [ct_upload(path)])
    assert refusal.problem == XRAY_LOOKS_LIKE_CT or refusal.problem.endswith(CT_HINT)
    assert "upload them with the modality set to CT" in refusal.problem


@pytest.mark.slow
def test_a_photograph_marked_ct_is_refused(clinician, media_root):
    """A colour photograph is no CT slice (the colour rule of the CT appearance model)."""
    from sklearn.datasets import load_sample_image

    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("flower.jpg")).save(buffer, format="PNG")
    upload = SimpleUploadedFile("flower.png", buffer.getvalue(), content_type="image/png")
    refusal = _refused(clinician, media_root, [upload], modality="ct")
    assert refusal.problem == NOT_A_CT_SLICE


def test_an_abdomen_like_slice_is_accepted_as_ct(clinician):
    """No lungs is the segmentation's answer (a flag on the page), not an upload refusal:
    the modality check sees a CT slice."""
    case = services.create_case(owner=clinician, files=[abdomen_like_upload()], modality="ct")
    assert case.modality == "ct"
    assert Segmentation.objects.filter(image__case=case).count() == 1


def test_a_ct_dicom_is_routed_to_ct_and_shown_through_the_lung_window(clinician):
    """No mark needed: the header says CT. Its own window is soft tissue (W400/L40), in
    which the lungs are black, so the lung window W1500/L-600 is used."""
    hu = hounsfield_of()
    case = services.create_case(owner=clinician, files=[ct_dicom(hu)])
    assert case.modality == "ct"
    image = case.images.get()
    assert image.source_format == "dicom"
    assert image.original
    stored = _stored_pixels(image)
    assert stored.shape == hu.shape
    assert np.abs(stored.astype(int) - lung_window_rendition(hu)).max() <= 1
    assert Segmentation.objects.filter(image=image).exists()


def test_pydicoms_ct_sample_is_routed_to_ct_not_refused_as_a_non_radiograph(clinician):
    """A real chest CT crop (pydicom's CT_small.dcm, no Body Part Examined): a CT DICOM
    is no longer an X-ray refused for its modality but a CT slice."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    data = Path(path).read_bytes()
    upload = SimpleUploadedFile("ct.dcm", data, content_type="application/dicom")
    case = services.create_case(owner=clinician, files=[upload])
    assert case.modality == "ct"
    assert case.images.get().width == 128


def test_a_ct_dicom_with_a_lung_window_in_its_header_is_shown_through_it(clinician):
    hu = hounsfield_of()
    upload = ct_dicom(hu, window=([40.0, -500.0], [400.0, 1200.0]))
    image = services.create_case(owner=clinician, files=[upload]).images.get()
    expected = lung_window_rendition(hu, centre=-500.0, width=1200.0)
    assert np.abs(_stored_pixels(image).astype(int) - expected).max() <= 1


def test_a_ct_dicom_without_rescale_uses_its_header_window(clinician):
    hu = hounsfield_of()
    upload = ct_dicom(hu + 1024, rescale=False, window=([424.0], [1500.0]))
    image = services.create_case(owner=clinician, files=[upload]).images.get()
    expected = lung_window_rendition(hu + 1024, centre=424.0, width=1500.0)
    assert np.abs(_stored_pixels(image).astype(int) - expected).max() <= 1


def test_a_multi_frame_ct_volume_is_refused_with_a_message(clinician, media_root):
    refusal = _refused(clinician, media_root, [ct_dicom(frames=5, name="volume.dcm")])
    assert refusal.status == 415
    assert refusal.filename == "volume.dcm"
    assert "a CT volume of 5 slices (a multi-frame image)" in refusal.problem
    assert "single axial slices" in refusal.problem


def test_an_xray_dicom_marked_ct_is_refused(clinician, media_root):
    refusal = _refused(clinician, media_root, [ct_dicom(modality="DX")], modality="ct")
    assert "is a radiograph (Modality DX), but the upload is marked CT" in refusal.problem


def test_a_ct_dicom_of_the_abdomen_is_refused_from_its_header(clinician, media_root):
    refusal = _refused(clinician, media_root, [ct_dicom(body_part="ABDOMEN")])
    assert "a CT of the abdomen (Body Part Examined), not of the chest" in refusal.problem


def test_an_upload_mixing_xrays_and_a_ct_dicom_is_refused(clinician, media_root):
    refusal = _refused(clinician, media_root, [upload_of("2168a917.jpg"), ct_dicom()])
    assert "mixes X-rays and CT slices" in refusal.problem
    assert "slice.dcm (CT by its DICOM header)" in refusal.problem


def test_an_unknown_modality_is_refused(clinician, media_root):
    refusal = _refused(clinician, media_root, [ct_upload()], modality="mri")
    assert "unknown modality 'mri'" in refusal.problem


def test_xray_uploads_are_unchanged_xray_cases(clinician):
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    assert case.modality == "xray"
    assert Prediction.objects.filter(image__case=case).count() == 1
    assert not Segmentation.objects.exists()

"""Adding images to an existing case: validated as an upload is, all or nothing."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.accounts.models import AuditEvent
from apps.cases import services
from apps.cases.models import Case, Prediction
from apps.cases.validation import UploadRejected
from tests.cases.test_input_safety import make_dicom
from tests.conftest import stored_files, upload_of
from tests.ct_uploads import ct_dicom


def _dicom(name: str, patient: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(
        f"{name}.dcm", make_dicom(name=name, PatientID=patient), "application/dicom"
    )


@pytest.mark.slow
def test_added_images_join_the_case_with_their_jobs_and_are_audited(clinician, media_root):
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    added = services.add_images(
        case=case, files=[upload_of("5f619d7e.jpg"), upload_of("4d98e1de.jpg")], actor=clinician
    )
    assert [image.case_id for image in added] == [case.pk, case.pk]
    assert case.images.count() == 3
    assert Prediction.objects.filter(image__case=case).count() == 3
    assert len(stored_files(media_root)) == 3
    event = AuditEvent.objects.get(action="case.images_added", target_id=str(case.pk))
    assert event.after["images"] == [image.pk for image in added]


def test_images_of_another_modality_are_refused(clinician, media_root):
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    with pytest.raises(UploadRejected, match="this case holds"):
        services.add_images(case=case, files=[ct_dicom()], actor=clinician)
    assert case.images.count() == 1
    assert len(stored_files(media_root)) == 1


def test_images_beyond_the_case_limit_are_refused(clinician, media_root, settings):
    settings.CXR_MAX_IMAGES_PER_CASE = 2
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    files = [upload_of("5f619d7e.jpg"), upload_of("4d98e1de.jpg")]
    with pytest.raises(UploadRejected, match="3 images; a case holds at most 2"):
        services.add_images(case=case, files=files, actor=clinician)
    assert case.images.count() == 1
    assert len(stored_files(media_root)) == 1


def test_images_of_another_patient_are_refused(clinician, media_root):
    case = services.create_case(owner=clinician, files=[_dicom("2168a917.jpg", "HOSP-1")])
    assert case.patient_pseudonym
    with pytest.raises(UploadRejected, match="another patient"):
        services.add_images(case=case, files=[_dicom("5f619d7e.jpg", "HOSP-2")], actor=clinician)
    assert Case.objects.get(pk=case.pk).images.count() == 1
    assert not AuditEvent.objects.filter(action="case.images_added").exists()


def test_one_refused_file_stores_none_of_the_added_ones(clinician, media_root):
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    files = [upload_of("5f619d7e.jpg"), upload_of("bad.jpg", b"not an image")]
    with pytest.raises(UploadRejected) as excinfo:
        services.add_images(case=case, files=files, actor=clinician)
    assert [r.filename for r in excinfo.value.rejections] == ["bad.jpg"]
    assert case.images.count() == 1
    assert len(stored_files(media_root)) == 1

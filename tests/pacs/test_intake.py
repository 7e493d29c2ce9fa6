"""Studies received from the PACS go through the upload's service: one case per study,
owned by the service account, refused instances never stored, identifiers only in the
protected mapping."""

from __future__ import annotations

import io
import threading
import time

import pydicom
import pytest
from django.utils import timezone
from pydicom.uid import generate_uid

from apps.accounts.models import AuditEvent
from apps.cases.models import Case, CaseImage, Prediction
from apps.pacs.intake import ReceivedInstance, receive_association
from apps.pacs.models import Refusal, StudyLink
from apps.pacs.protect import unseal
from tests.cases.test_input_safety import make_dicom
from tests.factories import UserFactory

LATERAL = "lateral/covid-19-pneumonia-30-L.jpg"


def study_files(names: list[str], **tags) -> list[bytes]:
    study = {"StudyInstanceUID": generate_uid(), "PatientID": "HOSP-0042", **tags}
    return [make_dicom(name=name, **study) for name in names]


def corrupt_dicom() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_dicom()))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def service_user(db, settings):
    settings.CXR_DICOM_SERVICE_USER = "pacs"
    return UserFactory(username="pacs", roles=["clinician"])


def test_a_study_of_two_images_becomes_one_case_of_the_service_account(
    service_user, production_model, media_root
):
    files = study_files(["2168a917.jpg", "00001280_004.jpg"])
    instances = [ReceivedInstance.from_bytes(content) for content in files]
    (case,) = receive_association(instances, calling_ae="ORTHANC", address="127.0.0.1")
    assert case.owner == service_user
    assert case.images.count() == 2
    assert Prediction.objects.filter(image__case=case).count() == 2
    link = StudyLink.objects.get(case=case)
    mapping = unseal(link.sealed)
    assert mapping["study"]["StudyInstanceUID"] == instances[0].study["StudyInstanceUID"]
    assert mapping["study"]["PatientID"] == "HOSP-0042"
    originals = {m["SOPInstanceUID"] for m in mapping["images"].values()}
    assert originals == {i.instance["SOPInstanceUID"] for i in instances}
    # The de-identified store holds neither the patient nor the original UIDs.
    for image in case.images.all():
        with image.original.open("rb") as fh:
            stored = pydicom.dcmread(fh)
        assert stored.StudyInstanceUID != mapping["study"]["StudyInstanceUID"]
        assert stored.SOPInstanceUID not in originals
        assert "HOSP-0042" not in str(stored.get("PatientID", ""))
    assert b"HOSP-0042" not in bytes(link.sealed)
    assert AuditEvent.objects.filter(action="pacs.receive", target_id=str(case.pk)).exists()


@pytest.mark.slow
def test_lateral_and_corrupt_instances_are_refused_and_never_stored(
    service_user, production_model, media_root
):
    frontal, lateral = study_files(["2168a917.jpg", LATERAL])
    instances = [ReceivedInstance.from_bytes(c) for c in (frontal, lateral, corrupt_dicom())]
    (case,) = receive_association(instances, calling_ae="ORTHANC", address="127.0.0.1")
    assert case.images.count() == 1  # the frontal one
    reasons = sorted(Refusal.objects.values_list("reason", flat=True))
    assert len(reasons) == 2
    assert any("lateral" in reason for reason in reasons), reasons
    assert AuditEvent.objects.filter(action="pacs.refuse").count() == 2


@pytest.mark.slow
def test_a_study_whose_every_instance_is_refused_makes_no_case(
    service_user, production_model, media_root
):
    (lateral,) = study_files([LATERAL])
    cases = receive_association(
        [ReceivedInstance.from_bytes(lateral), ReceivedInstance.from_bytes(corrupt_dicom())],
        calling_ae="ORTHANC",
        address="127.0.0.1",
    )
    assert cases == []
    assert Case.objects.count() == 0
    assert CaseImage.objects.count() == 0
    assert Refusal.objects.count() == 2
    assert list(media_root.rglob("*.png")) == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_listener_refuses_a_store_from_an_address_not_on_the_allow_list(settings, media_root):
    from pynetdicom import AE

    from apps.pacs.scp import NOT_AUTHORISED, Listener
    from tests.pacs.orthanc import free_port

    UserFactory(username="pacs", roles=["clinician"])
    settings.CXR_DICOM_SERVICE_USER = "pacs"
    settings.CXR_DICOM_ALLOWED = ["ORTHANC@10.9.9.9"]
    port = free_port()
    listener = Listener(ae_title="CXRAI", host="127.0.0.1", port=port)
    listener.start()
    try:
        dataset = pydicom.dcmread(io.BytesIO(make_dicom()))
        ae = AE(ae_title="ORTHANC")
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRAI")
        assert assoc.is_established  # the AE title is listed; its address is not
        status = assoc.send_c_store(dataset)
        assoc.release()
        assert status.Status == NOT_AUTHORISED
        # An AE title not on the list does not get an association at all.
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        assert stranger.associate("127.0.0.1", port, ae_title="CXRAI").is_rejected
        deadline = time.monotonic() + 10
        while not Refusal.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        listener.stop()
    refusal = Refusal.objects.get()
    assert "not in CXR_DICOM_ALLOWED" in refusal.reason
    assert refusal.address == "127.0.0.1"
    assert Case.objects.count() == 0


def _study(names: list[str], study_uid: str, patient: str = "HOSP-0042") -> list[ReceivedInstance]:
    return [
        ReceivedInstance.from_bytes(content)
        for content in study_files(names, StudyInstanceUID=study_uid, PatientID=patient)
    ]


def test_a_study_sent_in_two_associations_becomes_one_case_with_both_mappings(
    service_user, production_model, media_root
):
    uid = generate_uid()
    first, second = _study(["2168a917.jpg"], uid), _study(["00001280_004.jpg"], uid)
    (case,) = receive_association(first, calling_ae="ORTHANC", address="127.0.0.1")
    (again,) = receive_association(second, calling_ae="ORTHANC", address="127.0.0.1")
    assert again.pk == case.pk
    assert Case.objects.count() == 1
    assert case.images.count() == 2
    assert Prediction.objects.filter(image__case=case).count() == 2
    link = StudyLink.objects.get(case=case)
    assert link.study_key
    assert uid not in link.study_key
    mapping = unseal(link.sealed)
    assert {str(pk) for pk in case.images.values_list("pk", flat=True)} == set(mapping["images"])
    originals = {m["SOPInstanceUID"] for m in mapping["images"].values()}
    assert originals == {i.instance["SOPInstanceUID"] for i in first + second}
    assert AuditEvent.objects.filter(action="pacs.receive", target_id=str(case.pk)).count() == 2
    assert AuditEvent.objects.filter(action="case.images_added").count() == 1


def test_another_study_makes_another_case(service_user, production_model, media_root):
    first = _study(["2168a917.jpg"], generate_uid())
    second = _study(["00001280_004.jpg"], generate_uid())
    (case,) = receive_association(first, calling_ae="ORTHANC", address="127.0.0.1")
    (other,) = receive_association(second, calling_ae="ORTHANC", address="127.0.0.1")
    assert other.pk != case.pk
    assert StudyLink.objects.count() == 2


@pytest.mark.slow
def test_a_later_association_whose_image_is_refused_leaves_the_case_as_it_was(
    service_user, production_model, media_root
):
    uid = generate_uid()
    (case,) = receive_association(
        _study(["2168a917.jpg"], uid), calling_ae="ORTHANC", address="127.0.0.1"
    )
    sealed = bytes(StudyLink.objects.get(case=case).sealed)
    cases = receive_association(_study([LATERAL], uid), calling_ae="ORTHANC", address="127.0.0.1")
    assert cases == []
    assert case.images.count() == 1
    assert bytes(StudyLink.objects.get(case=case).sealed) == sealed
    assert len(list(media_root.rglob("*.png"))) == 1
    assert Refusal.objects.count() == 1


def test_another_patient_under_the_same_study_uid_is_refused(
    service_user, production_model, media_root
):
    uid = generate_uid()
    (case,) = receive_association(
        _study(["2168a917.jpg"], uid), calling_ae="ORTHANC", address="127.0.0.1"
    )
    other = _study(["00001280_004.jpg"], uid, patient="HOSP-0099")
    assert receive_association(other, calling_ae="ORTHANC", address="127.0.0.1") == []
    assert Case.objects.count() == 1
    assert case.images.count() == 1
    (reason,) = Refusal.objects.values_list("reason", flat=True)
    assert "another patient" in reason


@pytest.mark.slow
def test_a_study_whose_case_was_deleted_makes_a_new_case(
    service_user, production_model, media_root
):
    uid = generate_uid()
    (case,) = receive_association(
        _study(["2168a917.jpg"], uid), calling_ae="ORTHANC", address="127.0.0.1"
    )
    Case.objects.filter(pk=case.pk).update(deleted_at=timezone.now())
    (again,) = receive_association(
        _study(["00001280_004.jpg"], uid), calling_ae="ORTHANC", address="127.0.0.1"
    )
    assert again.pk != case.pk


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_two_associations_of_one_study_at_the_same_moment_make_one_case(
    service_user, production_model, media_root
):
    from django.db import connection

    uid = generate_uid()
    associations = [_study(["2168a917.jpg"], uid), _study(["00001280_004.jpg"], uid)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def receive(instances: list[ReceivedInstance]) -> None:
        try:
            barrier.wait(timeout=30)
            receive_association(instances, calling_ae="ORTHANC", address="127.0.0.1")
        except BaseException as exc:  # reported below, from the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=receive, args=(a,)) for a in associations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    (case,) = Case.objects.all()
    assert case.images.count() == 2
    assert len(unseal(StudyLink.objects.get(case=case).sealed)["images"]) == 2

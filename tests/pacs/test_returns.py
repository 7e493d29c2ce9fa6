"""The objects sent back to the PACS: a valid Structured Report and Secondary Capture that
belong to the original study and carry the result, the model and the notice."""

from __future__ import annotations

import io
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from apps.pacs import returns
from apps.pacs.protect import seal, unseal
from apps.pacs.scp import Allowed
from apps.pacs.tasks import backoff

STUDY = {
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1111",
    "PatientID": "HOSP-0042",
    "PatientName": "DOE^JANE",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "StudyID": "S1",
    "StudyDate": "20261207",
    "StudyTime": "101500",
    "AccessionNumber": "ACC-77",
    "ReferringPhysicianName": "WHO^DR",
}
INSTANCE = {
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.2222",
    "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.3333",
    "Modality": "DX",
}


def _prediction():
    return SimpleNamespace(
        label="pneumonia",
        probabilities={"covid19": 0.1, "normal": 0.2, "pneumonia": 0.7},
        operating_point=None,
        model_version=SimpleNamespace(name="cxr-tiny v3", sha256="ab" * 32),
    )


def _roundtrip(ds) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _dciodvfy_errors(ds, tmp_path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        return []
    path = tmp_path / "object.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")
    ]


@pytest.mark.slow
def test_structured_report_holds_result_model_and_original_study(tmp_path):
    sop, series = generate_uid(), generate_uid()
    sr = _roundtrip(
        returns.build_sr(
            study=STUDY, instance=INSTANCE, prediction=_prediction(), sop_uid=sop, series_uid=series
        )
    )
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.StudyInstanceUID == STUDY["StudyInstanceUID"]
    assert sr.PatientID == STUDY["PatientID"]
    assert sr.SOPInstanceUID == sop
    assert sr.SeriesInstanceUID == series
    values = {
        item.ConceptNameCodeSequence[0].CodeMeaning: (
            item.get("TextValue") or float(item.MeasuredValueSequence[0].NumericValue)
        )
        for item in sr.ContentSequence
    }
    assert values["Probability of pneumonia"] == pytest.approx(0.7)
    assert values["Probability of covid19"] == pytest.approx(0.1)
    assert values["Label"] == "pneumonia"
    assert values["Model version"] == "cxr-tiny v3"
    assert values["Model sha256"] == "ab" * 32
    assert values["Notice"] == returns.BANNER
    assert "model default" in str(values["Operating point"])
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == STUDY["StudyInstanceUID"]
    assert (
        evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == INSTANCE["SOPInstanceUID"]
    )
    assert _dciodvfy_errors(sr, tmp_path) == []


@pytest.mark.slow
def test_secondary_capture_has_burned_in_banner_and_original_study(tmp_path):
    picture = np.full((200, 160, 3), 90, dtype=np.uint8)
    pixels = returns.banner_picture(picture)
    assert pixels.shape[0] > 200
    assert pixels.shape[1] == 160
    band = pixels[: pixels.shape[0] - 200]
    assert (band == [255, 255, 255]).all(axis=-1).any(), "the banner's text is white on red"
    sc = _roundtrip(
        returns.build_sc(
            study=STUDY,
            instance=INSTANCE,
            pixels=pixels,
            sop_uid=generate_uid(),
            series_uid=generate_uid(),
        )
    )
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.StudyInstanceUID == STUDY["StudyInstanceUID"]
    assert str(sc.PatientName) == "DOE^JANE"
    assert sc.BurnedInAnnotation == "YES"
    assert sc.pixel_array.shape == pixels.shape
    assert _dciodvfy_errors(sc, tmp_path) == []


def test_mapping_is_sealed_and_reads_back(settings):
    token = seal({"study": STUDY})
    assert b"HOSP-0042" not in token
    assert b"DOE" not in token
    assert unseal(token) == {"study": STUDY}


def test_allow_list_and_destination_parse():
    assert Allowed.parse("ORTHANC@10.0.0.5").admits("ORTHANC", "10.0.0.5")
    assert not Allowed.parse("ORTHANC@10.0.0.5").admits("ORTHANC", "10.0.0.6")
    assert Allowed.parse("*@127.0.0.1").admits("ANY", "127.0.0.1")
    with pytest.raises(ValueError, match="not AE@address"):
        Allowed.parse("ORTHANC")
    assert returns.Destination.parse("PACS@pacs.local:4242") == returns.Destination(
        "PACS", "pacs.local", 4242
    )
    with pytest.raises(ValueError, match="not AE@host:port"):
        returns.Destination.parse("PACS@pacs.local")


def test_backoff_doubles_and_is_capped(settings):
    settings.CXR_PACS_RETURN_BACKOFF_SECONDS = 5
    assert [backoff(n) for n in range(4)] == [5, 10, 20, 40]
    assert backoff(20) == 300


def test_system_checks_name_a_malformed_peer_setting(settings):
    from apps.pacs.checks import pacs_settings

    settings.CXR_DICOM_ALLOWED = ["ORTHANC@127.0.0.1"]
    settings.CXR_PACS_DESTINATION = "ORTHANC@127.0.0.1:4242"
    assert pacs_settings(None) == []
    settings.CXR_DICOM_ALLOWED = ["ORTHANC"]
    settings.CXR_PACS_DESTINATION = "ORTHANC@127.0.0.1"
    ids = sorted(str(error.id) for error in pacs_settings(None))
    assert ids == ["pacs.E001", "pacs.E002"]


@pytest.mark.django_db
def test_mapping_past_its_retention_is_erased_and_the_case_stays(settings):
    from datetime import timedelta

    from django.utils import timezone

    from apps.pacs.models import StudyLink
    from apps.pacs.services import purge_expired_links
    from tests.factories import CaseFactory

    settings.CXR_PACS_MAPPING_RETENTION_DAYS = 30
    old, new = CaseFactory(), CaseFactory()
    for case in (old, new):
        StudyLink.objects.create(case=case, calling_ae="ORTHANC", sealed=seal({"study": STUDY}))
    StudyLink.objects.filter(case=old).update(received_at=timezone.now() - timedelta(days=31))
    assert purge_expired_links() == 1
    erased = StudyLink.objects.get(case=old)
    assert bytes(erased.sealed) == b""
    assert erased.erased_at is not None
    assert unseal(StudyLink.objects.get(case=new).sealed)["study"] == STUDY
    old.refresh_from_db()  # the case stays

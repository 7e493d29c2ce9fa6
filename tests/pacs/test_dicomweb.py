"""The DICOMweb option against a real Orthanc (its DICOMweb plugin): the pull takes each
new chest X-ray study once (QIDO-RS, WADO-RS) through the same intake, and the results go
back by STOW-RS. Skipped with a reason without Orthanc unless ``CXR_REQUIRE_ORTHANC=1``."""

from __future__ import annotations

import io
import os

import pydicom
import pytest
from django.utils import timezone

from apps.cases.models import Case, Prediction
from apps.explain.models import Explanation
from apps.pacs.dicomweb import pull_new_studies
from apps.pacs.models import PulledStudy, ReturnedObject
from apps.pacs.services import return_case
from tests.factories import UserFactory
from tests.pacs.orthanc import Orthanc, free_port, require_orthanc
from tests.pacs.test_intake import LATERAL, study_files

pytestmark = pytest.mark.slow


@pytest.fixture
def orthanc(tmp_path):
    require_orthanc()
    server = Orthanc(tmp_path / "orthanc", platform_ae="CXRAI", platform_port=free_port())
    server.start()
    yield server
    server.stop()


def test_pull_takes_each_new_study_once_and_returns_results_by_stow(
    orthanc, settings, production_model, media_root
):
    if "dicom-web" not in orthanc.get("/plugins"):
        if os.environ.get("CXR_REQUIRE_ORTHANC") == "1":
            pytest.fail("CXR_REQUIRE_ORTHANC=1 but Orthanc has no DICOMweb plugin")
        pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian: orthanc-dicomweb)")
    UserFactory(username="pacs", roles=["clinician"])
    settings.CXR_DICOM_SERVICE_USER = "pacs"
    dicomweb = f"{orthanc.url}/dicom-web"
    settings.CXR_PACS_DESTINATION = dicomweb
    today = timezone.now().strftime("%Y%m%d")
    frontal_a, frontal_b = study_files(["2168a917.jpg", "00001280_004.jpg"], StudyDate=today)
    (lateral,) = study_files([LATERAL], StudyDate=today)
    (old,) = study_files(["2168a917.jpg"], StudyDate="20200101")  # older than a day
    for content in (frontal_a, frontal_b, lateral, old):
        orthanc.upload(content)
    study_uid = pydicom.dcmread(io.BytesIO(frontal_a)).StudyInstanceUID

    first = pull_new_studies(dicomweb)
    assert first["found"] == 2  # the two-image study and the lateral one
    assert first["pulled"] == 2
    assert first["cases"] == 1  # the lateral study is refused whole
    assert PulledStudy.objects.count() == 2
    (case,) = Case.objects.all()
    assert case.images.count() == 2
    assert pull_new_studies(dicomweb) == {"found": 2, "pulled": 0, "cases": 0}

    # The predictions, as a worker would finish them (no Grad-CAM: the plain image).
    Explanation.objects.filter(image__case=case).delete()
    for prediction in Prediction.objects.filter(image__case=case):
        prediction.status = "done"
        prediction.model_version = production_model
        prediction.label = "normal"
        prediction.probabilities = {"covid19": 0.05, "normal": 0.9, "pneumonia": 0.05}
        prediction.save()
    assert return_case(case.pk) == {"sent": 4, "already": 0}
    assert return_case(case.pk) == {"sent": 0, "already": 4}
    assert ReturnedObject.objects.filter(state="sent").count() == 4
    returned = [
        orthanc.get(f"/instances/{i['ID']}/simplified-tags")
        for i in orthanc.study_instances(study_uid)
    ]
    classes = [
        tags["SOPClassUID"] for tags in returned if tags.get("Manufacturer") == "CXR platform"
    ]
    assert classes.count("1.2.840.10008.5.1.4.1.1.88.33") == 2  # two SRs
    assert classes.count("1.2.840.10008.5.1.4.1.1.7") == 2  # two SCs

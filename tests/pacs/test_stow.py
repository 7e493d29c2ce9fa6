"""Receiving by STOW-RS: Orthanc's DICOMweb plugin pushes a study to the listener's HTTP
endpoint, which takes it through the same intake as a C-STORE. Skipped with a reason
without Orthanc unless ``CXR_REQUIRE_ORTHANC=1``."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from apps.cases.models import Case
from apps.pacs.models import Refusal
from apps.pacs.scp import Listener
from apps.pacs.stow import parse_multipart
from tests.factories import UserFactory
from tests.pacs.orthanc import Orthanc, free_port, require_orthanc
from tests.pacs.test_intake import LATERAL, study_files

TOKEN = "stow-test-token-0123456789"


def test_multipart_related_body_gives_its_dicom_parts():
    body = (
        b"--XX\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n"
        b"--XX\r\nContent-Type: application/dicom\r\n\r\nsecond\r\n--XX--\r\n"
    )
    parts = parse_multipart('multipart/related; type="application/dicom"; boundary=XX', body)
    assert parts == [b"first", b"second"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_orthanc_pushes_a_study_by_stow_and_it_becomes_one_case(
    tmp_path, settings, production_model, media_root
):
    require_orthanc()
    UserFactory(username="pacs", roles=["clinician"])
    settings.CXR_DICOM_SERVICE_USER = "pacs"
    settings.CXR_DICOM_ALLOWED = ["*@127.0.0.1"]
    settings.CXR_DICOMWEB_STOW_PORT = stow_port = free_port()
    settings.CXR_DICOMWEB_STOW_TOKEN = TOKEN
    listener = Listener(ae_title="CXRAI", host="127.0.0.1", port=free_port())
    listener.start()
    orthanc = Orthanc(
        tmp_path / "orthanc",
        platform_ae="CXRAI",
        platform_port=listener.port,
        dicomweb_servers={
            "cxr": {
                "Url": f"http://127.0.0.1:{stow_port}/",
                "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
            }
        },
    )
    orthanc.start()
    try:
        if "dicom-web" not in orthanc.get("/plugins"):
            pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian: orthanc-dicomweb)")
        frontal = study_files(["2168a917.jpg", "00001280_004.jpg"])
        (lateral,) = study_files([LATERAL])
        ids = [orthanc.upload(content) for content in (*frontal, lateral)]

        def stow(instance_id: str) -> None:
            study = orthanc.get(f"/instances/{instance_id}/study")["ID"]
            body = f'{{"Resources": ["{study}"]}}'.encode()
            orthanc.request("POST", "/dicom-web/servers/cxr/stow", body)

        stow(ids[0])  # the two frontal images: 200, one case
        (case,) = Case.objects.all()
        assert case.images.count() == 2
        assert case.owner.username == "pacs"
        # The lateral study: refused (409), so Orthanc's job fails; nothing is stored.
        with pytest.raises(urllib.error.HTTPError):
            stow(ids[2])
        (refusal,) = Refusal.objects.all()
        assert "lateral" in refusal.reason
        assert Case.objects.count() == 1
        # Without the token: 403, counted as a refusal, nothing stored.
        request = urllib.request.Request(
            f"http://127.0.0.1:{stow_port}/studies",
            data=b"--XX--",
            method="POST",
            headers={"Content-Type": "multipart/related; boundary=XX"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)  # noqa: S310 - loopback
        assert refused.value.code == 403
        assert Refusal.objects.count() == 2
        assert Case.objects.count() == 1
    finally:
        orthanc.stop()
        listener.stop()

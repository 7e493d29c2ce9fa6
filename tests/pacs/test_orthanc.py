"""A real PACS (Orthanc) sends a study to the platform and gets the results back.

Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) runs on free loopback ports with
a throw-away configuration; the platform's listener (``manage.py dicom_listener``) and a
Celery worker run as processes of their own on the test's database, broker and media.
Skipped with a reason where Orthanc is missing, unless ``CXR_REQUIRE_ORTHANC=1``.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from django.conf import settings
from pydicom.uid import generate_uid

from apps.cases.models import Case, Prediction
from apps.pacs.models import Refusal, ReturnedObject
from tests.cases.test_input_safety import make_dicom
from tests.pacs.orthanc import Orthanc, free_port, require_orthanc, wait_for
from tests.pacs.test_intake import LATERAL, corrupt_dicom
from tests.workers import REPO_ROOT, start_worker, stop_worker, wait_for_log, worker_database_url

pytestmark = [pytest.mark.worker, pytest.mark.slow]
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def start_listener(*, log_path: Path, media_root: Path, port: int, env: dict) -> subprocess.Popen:
    full = dict(os.environ)
    full.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=worker_database_url(),
        MEDIA_ROOT=str(media_root),
        CXR_VAR_DIR=str(settings.VAR_DIR),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CXR_TESTS_KEYPREFIX=str(
            settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
        ),
        **env,
    )
    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "manage.py", "dicom_listener", "--port", str(port),
             "--create-service-user"],
            cwd=REPO_ROOT, env=full, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


class Platform:
    """Orthanc (sender), the listener and a worker; the destination may be another Orthanc."""

    def __init__(self, tmp_path: Path, media_root: Path, *, separate_destination: bool) -> None:
        require_orthanc()
        self.tmp_path = tmp_path
        self.port = free_port()
        self.sender = Orthanc(tmp_path / "orthanc", platform_ae="CXRAI", platform_port=self.port)
        self.destination = (
            Orthanc(tmp_path / "orthanc-dest", platform_ae="CXRAI", platform_port=self.port)
            if separate_destination
            else self.sender
        )
        env = {
            "CXR_DICOM_AE_TITLE": "CXRAI",
            "CXR_DICOM_ALLOWED": "ORTHANC@127.0.0.1",
            "CXR_DICOM_SERVICE_USER": "pacs",
            "CXR_PACS_DESTINATION": self.destination.destination,
            "CXR_PACS_RETURN_BACKOFF_SECONDS": "1",
        }
        self.processes: list[subprocess.Popen] = []
        self.sender.start()
        self.listener_log = tmp_path / "listener.log"
        self.listener = start_listener(
            log_path=self.listener_log, media_root=media_root, port=self.port, env=env
        )
        self.worker_log = tmp_path / "worker.log"
        self.worker = start_worker(
            log_path=self.worker_log, media_root=media_root,
            queues="inference,explain,default", extra_env=env,
        )  # fmt: skip
        wait_for_log(self.listener_log, "ready on", self.listener, timeout=60)
        wait_for_log(self.worker_log, "ready.", self.worker, timeout=120)

    def logs(self):
        return (
            ("listener", lambda: self.listener_log.read_text(errors="replace")),
            ("worker", lambda: self.worker_log.read_text(errors="replace")),
            ("orthanc", self.sender.log),
        )

    def send(self, files: list[bytes]) -> None:
        ids = [self.sender.upload(content) for content in files]
        self.sender.send_to_platform(ids)

    def stop(self) -> None:
        stop_worker(self.worker)
        os.killpg(self.listener.pid, signal.SIGTERM)
        self.listener.wait(timeout=30)
        self.sender.stop()
        self.destination.stop()


@pytest.fixture
def platform_factory(tmp_path, media_root, production_model):
    made: list[Platform] = []

    def make(**kwargs) -> Platform:
        made.append(Platform(tmp_path, media_root, **kwargs))
        return made[-1]

    yield make
    for platform in made:
        platform.stop()


def _study(names: list[str]) -> tuple[str, str, list[bytes]]:
    study_uid = generate_uid()
    files = [
        make_dicom(name=name, StudyInstanceUID=study_uid, PatientID="HOSP-0042") for name in names
    ]
    return study_uid, "HOSP-0042", files


def _results(orthanc: Orthanc, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    found: dict[str, list[pydicom.Dataset]] = {SR_CLASS: [], SC_CLASS: []}
    for instance in orthanc.study_instances(study_uid):
        ds = pydicom.dcmread(io.BytesIO(orthanc.file(instance["ID"])))
        if ds.SOPClassUID in found and ds.get("Manufacturer") == "CXR platform":
            found[ds.SOPClassUID].append(ds)
    return found


@pytest.mark.django_db(transaction=True)
def test_orthanc_study_comes_back_with_a_report_and_a_heatmap(platform_factory):
    platform = platform_factory(separate_destination=False)
    study_uid, patient_id, files = _study(["2168a917.jpg", "00001280_004.jpg"])
    originals = {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files}
    started = time.monotonic()
    platform.send(files)

    def both_back():
        found = _results(platform.sender, study_uid)
        return found if len(found[SR_CLASS]) == 2 and len(found[SC_CLASS]) == 2 else None

    found = wait_for(
        both_back, timeout=240, what="2 SRs and 2 SCs in Orthanc", logs=platform.logs()
    )
    elapsed = time.monotonic() - started
    (case,) = Case.objects.all()
    assert case.owner.username == "pacs"
    assert case.images.count() == 2
    predictions = {p.image_id: p for p in Prediction.objects.filter(image__case=case)}
    for sr in found[SR_CLASS]:
        assert sr.StudyInstanceUID == study_uid
        assert sr.PatientID == patient_id
        values = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in sr.ContentSequence}
        referenced = (
            sr.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID
        )
        assert referenced in originals
        probabilities = {
            meaning.removeprefix("Probability of "): float(
                item.MeasuredValueSequence[0].NumericValue
            )
            for meaning, item in values.items()
            if meaning.startswith("Probability of ")
        }
        matching = [
            p for p in predictions.values() if p.probabilities.keys() == probabilities.keys()
        ]
        assert any(
            all(abs(p.probabilities[k] - v) < 1e-5 for k, v in probabilities.items())
            for p in matching
        )
        version = next(iter(predictions.values())).model_version
        assert version is not None
        assert values["Model version"].TextValue == version.name
        assert values["Model sha256"].TextValue == version.sha256
    for sc in found[SC_CLASS]:
        assert sc.StudyInstanceUID == study_uid
        assert sc.PatientID == patient_id
        assert sc.BurnedInAnnotation == "YES"
        assert sc.pixel_array.ndim == 3
    # Orthanc has them once each C-STORE ends; the worker records "sent" just after.
    wait_for(
        lambda: ReturnedObject.objects.filter(state="sent").count() == 4,
        timeout=60,
        what="4 results recorded as sent",
        logs=platform.logs(),
    )
    print(f"C-STORE to results in Orthanc: {elapsed:.1f} s")


@pytest.mark.django_db(transaction=True)
def test_orthanc_study_sent_in_two_associations_becomes_one_case(platform_factory):
    platform = platform_factory(separate_destination=False)
    study_uid, _, files = _study(["2168a917.jpg", "00001280_004.jpg"])
    for content in files:  # one C-STORE association each
        platform.send([content])

    def both_back():
        found = _results(platform.sender, study_uid)
        return found if len(found[SR_CLASS]) == 2 and len(found[SC_CLASS]) == 2 else None

    wait_for(both_back, timeout=240, what="2 SRs and 2 SCs in Orthanc", logs=platform.logs())
    (case,) = Case.objects.all()
    assert case.images.count() == 2
    # Orthanc has them once each C-STORE ends; the worker records "sent" just after.
    wait_for(
        lambda: ReturnedObject.objects.filter(state="sent").count() == 4,
        timeout=60,
        what="4 results recorded as sent",
        logs=platform.logs(),
    )


@pytest.mark.django_db(transaction=True)
def test_orthanc_lateral_and_corrupt_instances_never_become_cases(platform_factory):
    platform = platform_factory(separate_destination=False)
    study_uid, _, (lateral,) = _study([LATERAL])
    platform.send([lateral, corrupt_dicom()])
    wait_for(
        lambda: Refusal.objects.count() == 2, timeout=120, what="two refusals",
        logs=platform.logs(),
    )  # fmt: skip
    assert Case.objects.count() == 0
    assert any("lateral" in r.reason for r in Refusal.objects.all())
    assert _results(platform.sender, study_uid) == {SR_CLASS: [], SC_CLASS: []}


@pytest.mark.django_db(transaction=True)
def test_results_arrive_once_when_the_destination_comes_back(platform_factory):
    platform = platform_factory(separate_destination=True)  # the destination is down
    study_uid, _, files = _study(["2168a917.jpg"])
    platform.send(files)
    wait_for(
        lambda: ReturnedObject.objects.filter(attempts__gte=2).count() == 2,
        timeout=240, what="two failed sends", logs=platform.logs(),
    )  # fmt: skip
    assert ReturnedObject.objects.filter(state="sent").count() == 0
    platform.destination.start()
    found = wait_for(
        lambda: (lambda f: f if f[SR_CLASS] and f[SC_CLASS] else None)(
            _results(platform.destination, study_uid)
        ),
        timeout=120, what="the results in the destination", logs=platform.logs(),
    )  # fmt: skip
    time.sleep(5)  # any duplicate would arrive by now
    found = _results(platform.destination, study_uid)
    assert len(found[SR_CLASS]) == 1
    assert len(found[SC_CLASS]) == 1
    assert ReturnedObject.objects.filter(state="sent").count() == 2
    assert len(platform.destination.study_instances(study_uid)) == 2

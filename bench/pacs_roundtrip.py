"""PACS round trip: C-STORE of a study -> its results stored back in the PACS.

A real Orthanc (Debian's ``orthanc``) on free loopback ports sends one single-image chest
X-ray study at a time to the platform's listener (``manage.py dicom_listener``); one
Celery worker (``inference,explain,default``, concurrency 1) classifies it with the
bundled production model, makes its Grad-CAM and returns the Structured Report and the
Secondary Capture to the same Orthanc. The time of each study runs from Orthanc's
C-STORE request to both objects being found in Orthanc (polled every 0.1 s); p50/p95
over ``n`` studies. The platform runs as ``bench.e2e.Platform`` does (a temporary
directory, SQLite or ``BENCH_DATABASE_URL``, its own redis-server).

``python -m bench.pacs_roundtrip [n]`` writes ``bench/results-pacs.json`` and appends
its row to ``bench/results.md`` when that exists; ``make bench`` runs it after the rest.
Skipped (a line, no figures) where Orthanc is not installed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_JSON = ROOT / "bench" / "results-pacs.json"
OUT_MD = ROOT / "bench" / "results.md"
FRONTAL = ("2168a917.jpg", "00001280_004.jpg")
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"

log = logging.getLogger("bench")


def _returned(orthanc, study_uid: str) -> bool:
    classes = set()
    for instance in orthanc.study_instances(study_uid):
        tags = orthanc.get(f"/instances/{instance['ID']}/simplified-tags")
        if tags.get("Manufacturer") == "CXR platform":
            classes.add(tags.get("SOPClassUID"))
    return {SR_CLASS, SC_CLASS} <= classes


def study_dicom(name: str, study_uid: str) -> bytes:
    """A DX instance of a fixture chest X-ray in study ``study_uid``."""
    import io

    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    with Image.open(ROOT / "tests" / "fixtures" / "images" / name) as picture:
        pixels = np.asarray(picture.convert("L"), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BENCH", "BENCH^PATIENT", "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def measure(n: int = 20, timeout: float = 300.0) -> dict:
    from pydicom.uid import generate_uid

    from bench.e2e import Platform, _free_port
    from bench.stats import summary
    from tests.pacs.orthanc import ORTHANC, Orthanc

    if ORTHANC is None:
        return {"skipped": "Orthanc is not installed (apt-get install orthanc)"}
    platform = Platform()
    orthanc = None
    listener = worker = None
    try:
        platform.setup()
        port = _free_port()
        orthanc = Orthanc(platform.dir / "orthanc", platform_ae="CXRAI", platform_port=port)
        orthanc.start()
        env = {
            **platform.env,
            "CXR_DICOM_AE_TITLE": "CXRAI",
            "CXR_DICOM_ALLOWED": "ORTHANC@127.0.0.1",
            "CXR_PACS_DESTINATION": orthanc.destination,
            "CXR_PACS_RETURN_BACKOFF_SECONDS": "1",
        }
        listener_log = (platform.dir / "listener.log").open("w")
        listener = subprocess.Popen(
            [sys.executable, "manage.py", "dicom_listener", "--port", str(port),
             "--create-service-user"],
            cwd=ROOT, env=env, stdout=listener_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        platform.processes.append(listener)
        worker_log_path = platform.dir / "worker-pacs.log"
        with worker_log_path.open("w") as worker_log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "cxrplatform", "worker",
                 "-Q", "inference,explain,default", "--concurrency", "1", "--pool", "prefork",
                 "--loglevel", "INFO", "--hostname", "benchpacs@%h",
                 "--without-gossip", "--without-mingle"],
                cwd=ROOT, env={**env, "CXR_WARM_MODEL": "1"},
                stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        platform.processes.append(worker)
        deadline = time.monotonic() + 180
        while "ready." not in worker_log_path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not start:\n" + worker_log_path.read_text()[-3000:])
            time.sleep(0.2)
        time.sleep(5)  # the pool child loads the model after "ready."
        times, failed = [], 0
        for index in range(n + 1):  # the first study warms the explainer: not counted
            study_uid = generate_uid()
            content = study_dicom(FRONTAL[index % len(FRONTAL)], study_uid)
            instance = orthanc.upload(content)
            started = time.perf_counter()
            orthanc.send_to_platform([instance])
            end = time.monotonic() + timeout
            while not _returned(orthanc, study_uid):
                if time.monotonic() > end:
                    failed += 1
                    break
                time.sleep(0.1)
            else:
                if index > 0:
                    times.append(time.perf_counter() - started)
            log.info("bench pacs: study %d of %d", index, n)
        stats = summary(times, unit="s") if times else {"p50_s": None, "p95_s": None}
        return {
            "n": len(times),
            "failed": failed,
            "p50_s": stats["p50_s"],
            "p95_s": stats["p95_s"],
            "max_s": round(max(times), 2) if times else None,
            "worker": "one worker, inference,explain,default, concurrency 1",
        }
    finally:
        if orthanc is not None:
            orthanc.stop()
        platform.close()


def main() -> None:
    import os

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    result = measure(n=n)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    OUT_JSON.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if OUT_MD.exists() and "n" in result:
        row = (
            f"| PACS: C-STORE -> SR and SC stored back in Orthanc, one worker, p50 / p95 "
            f"(n={result['n']}, failed {result['failed']}) | {result['p50_s']} / "
            f"{result['p95_s']} s |  |  |  |\n"
        )
        with OUT_MD.open("a") as fh:
            fh.write(row)


if __name__ == "__main__":
    main()

"""The reading room's viewer, timed in a real browser: time to first image and to full
resolution on a study page (a 2,500 x 2,500 16-bit DICOM X-ray and its earlier study).

The platform runs in a temporary directory of its own (SQLite, DEBUG, ``manage.py
runserver``: one process, the static files served by Django), seeded with a radiologist
and two studies of one patient. Debian's Chromium (Playwright) opens the study ``n``
times, each in a fresh browser context, and reads what the viewer records (ms since the
page's navigation began): the first image painted (the 8-bit rendition) and the full
resolution painted (the DICOM's 16-bit values, windowed), for the main viewport and the
comparison one. Writes bench/results-reading.json; ``python -m bench.reading_viewer``.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results-reading.json"
SIDE = 2500
CHROMIUM = Path(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"))
PASSWORD = "bench-reading-pass-1"  # noqa: S105 - a throwaway database's user


def seed() -> dict:
    """Run inside the platform (``manage.py shell``): the users and the two studies."""
    import io

    import numpy as np
    from django.conf import settings
    from django.core.files.base import ContentFile
    from PIL import Image

    from apps.cases.deidentify import deidentify
    from ml.data.dicom import read_dataset
    from tests.cases.test_input_safety import make_dicom
    from tests.factories import CaseFactory, CaseImageFactory, PredictionFactory, UserFactory

    radiologist = UserFactory(username="bench-rad", roles=["radiologist"], password=PASSWORD)
    owner = UserFactory(username="bench-dr", roles=["clinician"])
    ids = []
    for probs in ((0.1, 0.1, 0.8), (0.8, 0.1, 0.1)):
        dicom = read_dataset(make_dicom(bits=16))
        film = np.asarray(dicom.pixel_array, dtype=np.float32)
        big = Image.fromarray(film).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
        values = np.clip(np.asarray(big), 0, 65535).astype(np.uint16)
        dicom.Rows, dicom.Columns = values.shape
        dicom.PixelData = values.tobytes()
        stored, _ = deidentify(dicom, key=settings.CXR_PSEUDONYM_KEY)
        rendition = io.BytesIO()
        Image.fromarray((values >> 8).astype(np.uint8)).save(rendition, format="PNG")
        case = CaseFactory(owner=owner, patient_ref="BENCH-PATIENT")
        image = CaseImageFactory(
            case=case,
            file=ContentFile(rendition.getvalue(), name="film.png"),
            width=SIDE,
            height=SIDE,
            source_format="dicom",
            original=ContentFile(stored, name="film.dcm"),
        )
        PredictionFactory(
            image=image,
            probabilities=dict(zip(("covid19", "pneumonia", "normal"), probs, strict=True)),
        )
        ids.append(case.pk)
    return {"radiologist": radiologist.username, "study": ids[-1], "prior": ids[0]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("runserver exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError("runserver did not start")


def _browse(url: str, username: str, study: int, n: int) -> dict:
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM_ARGS

    rows: dict[str, list[float]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for _ in range(n):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.goto(f"{url}/login/")
            page.get_by_label("Username").fill(username)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_load_state()
            page.goto(f"{url}/reading/cases/{study}/")
            for name in ("main", "compare"):
                viewport = page.locator(f"[data-viewport='{name}']")
                page.wait_for_selector(f"[data-viewport='{name}'][data-ready]", timeout=120_000)
                for what in ("first-image", "full-res"):
                    value = viewport.get_attribute(f"data-{what}-at")
                    rows.setdefault(f"{name}_{what}_ms", []).append(float(value or "nan"))
            context.close()
        browser.close()
    return {
        key: {"median": statistics.median(v), "max": max(v), "n": len(v)} for key, v in rows.items()
    }


def measure(n: int = 5) -> dict:
    if not CHROMIUM.exists():
        return {"skipped": f"{CHROMIUM} not installed (apt-get install chromium)"}
    with tempfile.TemporaryDirectory(prefix="bench-reading-") as tmp:
        env = {
            **os.environ,
            "DEBUG": "1",
            "DATABASE_URL": f"sqlite:///{tmp}/db.sqlite3",
            "CXR_VAR_DIR": tmp,
            "CELERY_BROKER_URL": f"filesystem://{tmp}/broker",
        }
        manage = [sys.executable, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        code = "import json; from bench.reading_viewer import seed; print(json.dumps(seed()))"
        out = subprocess.run(
            [*manage, "shell", "-c", code],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        seeded = json.loads(out.strip().splitlines()[-1])
        port = _free_port()
        server = subprocess.Popen(
            [*manage, "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait(port, server)
            figures = _browse(f"http://127.0.0.1:{port}", seeded["radiologist"], seeded["study"], n)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return {"image": f"{SIDE}x{SIDE} 16-bit DICOM (and its prior)", "server": "runserver",
            **figures}  # fmt: skip


def main() -> None:
    started = time.perf_counter()
    result = measure()
    result["_seconds"] = round(time.perf_counter() - started, 1)
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

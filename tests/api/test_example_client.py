"""examples/api_client.py against a live server and a real Celery worker."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from knox.models import AuthToken
from PIL import Image

from apps.accounts.models import AuditEvent
from apps.cases.models import Case
from tests.conftest import IMAGES, REPO_ROOT
from tests.factories import PASSWORD


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_example_client_uploads_waits_and_downloads_the_overlay(
    live_server, clinician, production_model, worker, tmp_path
):
    process, log_path = worker
    out = tmp_path / "overlays"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "examples" / "api_client.py"),
            "--url", live_server.url,
            "--username", clinician.username,
            "--password", PASSWORD,
            "--out", str(out),
            "--timeout", "180",
            "--interval", "0.5",
            str(IMAGES / "2168a917.jpg"),
            str(IMAGES / "00001280_004.jpg"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert process.poll() is None, log_path.read_text()[-4000:]
    assert result.returncode == 0, result.stderr + "\nworker log:\n" + log_path.read_text()[-4000:]

    case = Case.objects.get(owner=clinician)
    assert f"created case {case.pk} with 2 image(s)" in result.stdout
    overlays = sorted(out.glob("*.png"))
    assert [p.name for p in overlays] == sorted(
        f"case{case.pk}-image{image.pk}-gradcam.png" for image in case.images.all()
    )
    for path, image in zip(overlays, case.images.order_by("pk"), strict=True):
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as png:
            png.verify()
        explanation = image.explanations.get(method="gradcam")
        with explanation.overlay.open("rb") as stored:
            assert stored.read() == data  # the very file the worker rendered
        prediction = image.predictions.get()
        p = prediction.probabilities
        assert (
            f"{prediction.label} (covid19 {p['covid19']:.3f}, pneumonia {p['pneumonia']:.3f}, "
            f"normal {p['normal']:.3f})"
        ) in result.stdout
    assert "by model cxr-tiny" in result.stdout
    # The token it obtained is revoked when it finishes, not left valid until it expires.
    assert "revoked the API token" in result.stdout
    assert not AuthToken.objects.filter(user=clinician).exists()
    assert AuditEvent.objects.filter(action="token.revoked", actor=clinician).count() == 1


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_example_client_segments_ct_slices_and_downloads_their_masks(
    live_server, clinician, ct_production_model, worker, tmp_path
):
    from apps.cases.models import CT_MASK_KINDS, Segmentation
    from tests.ct_uploads import CT_SLICE

    process, log_path = worker
    out = tmp_path / "masks"
    result = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "examples" / "api_client.py"), "--ct",
            "--url", live_server.url, "--username", clinician.username, "--password", PASSWORD,
            "--out", str(out), "--timeout", "180", "--interval", "0.5", str(CT_SLICE),
        ],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert process.poll() is None, log_path.read_text()[-4000:]
    assert result.returncode == 0, result.stderr + "\nworker log:\n" + log_path.read_text()[-4000:]
    case = Case.objects.get(owner=clinician)
    assert case.modality == "ct"
    segmentation = Segmentation.objects.get(image__case=case)
    assert segmentation.status == "done"
    image = segmentation.image
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"case{case.pk}-image{image.pk}-{kind}.png" for kind in CT_MASK_KINDS
    )
    with segmentation.lung_mask.open("rb") as stored:
        assert (out / f"case{case.pk}-image{image.pk}-lungs.png").read_bytes() == stored.read()
    assert (
        f"{CT_SLICE.name}: {segmentation.percent_affected:.1f}% of the lung affected"
    ) in result.stdout
    assert f"by model {ct_production_model.name}" in result.stdout


@pytest.mark.slow
def test_example_client_explains_refusals_in_words(live_server, clinician, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an x-ray")
    result = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "examples" / "api_client.py"),
            "--url", live_server.url, "--username", clinician.username, "--password", "wrong",
            str(bad),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "HTTP 400 invalid: Unable to log in with these credentials." in result.stderr

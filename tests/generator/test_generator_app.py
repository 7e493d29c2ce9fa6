"""The generator page and its safety rules: model admins ask for a grid, a
job draws it marked SYNTHETIC, and marked images never become cases or snapshot items."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image

from apps.accounts.models import AuditEvent
from apps.cases import services as case_services
from apps.cases.models import Case, CaseImage
from apps.cases.validation import UploadRejected
from apps.generator.models import GeneratorVersion, SampleGrid
from apps.generator.services import GeneratorUnavailable, register_generator, request_grid
from apps.models.datasets import create_snapshot, import_reference_dataset
from apps.models.models import SnapshotItem
from cxrplatform.jobs import run_job_now
from ml.generate.watermark import synthetic_reason
from tests.conftest import FIXTURES, IMAGES, fixture_manifest, stored_files, upload_of

# Every test uses the tiny generator trained by tests/generator/conftest.py.
pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def _done_grid(version, user, *, label="covid19", n=4, seed=0) -> SampleGrid:
    grid = request_grid(version=version, label=label, n=n, seed=seed, requested_by=user)
    run_job_now(SampleGrid, grid.pk)
    grid.refresh_from_db()
    return grid


def test_register_is_idempotent_and_refuses_what_is_not_a_generator(gan_tiny_model, capsys):
    first, created = register_generator(gan_tiny_model)
    again, created_again = register_generator(gan_tiny_model)
    assert created
    assert not created_again
    assert first.pk == again.pk
    assert first.card["kind"] == "generator"
    assert len(first.sha256) == 64
    call_command("register_generator", str(gan_tiny_model))
    assert "already registered" in capsys.readouterr().out
    with pytest.raises(GeneratorUnavailable, match="not a generator"):
        register_generator(FIXTURES / "models" / "cxr-tiny.keras")
    with pytest.raises(CommandError, match="No generator file"):
        call_command("register_generator", "/nonexistent/generator.keras")
    assert GeneratorVersion.objects.count() == 1


def test_model_admin_asks_for_a_grid_and_gets_a_marked_png(
    login, model_admin, generator_version, django_capture_on_commit_callbacks
):
    client = login(model_admin)
    page = client.get("/generator/")
    assert page.status_code == 200
    assert f"#{generator_version.pk}" in page.content.decode()
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = client.post(
            "/generator/",
            {"version": generator_version.pk, "label": "pneumonia", "n": 8, "seed": 5},
        )
    grid = SampleGrid.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/generator/grids/{grid.pk}/"
    assert len(queued) == 1
    assert grid.status == "pending"
    assert "Reload this page" in client.get(f"/generator/grids/{grid.pk}/").content.decode()
    run_job_now(SampleGrid, grid.pk)
    grid.refresh_from_db()
    assert grid.status == "done", grid.error
    assert grid.metadata["class"] == "pneumonia"
    assert grid.metadata["n"] == 8
    detail = client.get(f"/generator/grids/{grid.pk}/").content.decode()
    assert "SYNTHETIC" in detail
    assert f"/generator/grids/{grid.pk}/grid.png" in detail
    png = client.get(f"/generator/grids/{grid.pk}/grid.png")
    assert png.status_code == 200
    assert png["X-Synthetic-Image"] == "true"
    assert png["Cache-Control"] == "private, no-store"
    image = Image.open(io.BytesIO(b"".join(png.streaming_content)))
    assert json.loads(image.info["cxr-synthetic"])["seed"] == 5
    assert synthetic_reason(image)
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"generator.sample", "generator.download"} <= actions
    # Asking twice with the same settings draws the very same pixels.
    again = _done_grid(generator_version, model_admin, label="pneumonia", n=8, seed=5)
    with grid.image.open("rb") as a, again.image.open("rb") as b:
        assert (Image.open(a).tobytes()) == Image.open(b).tobytes()


def test_bad_requests_and_other_roles_are_refused(
    client, login, clinician, model_admin, generator_version
):
    assert client.get("/generator/").status_code == 302  # anonymous: to the log-in
    login(clinician)
    assert client.get("/generator/").status_code == 403
    login(model_admin)
    response = client.post(
        "/generator/", {"version": generator_version.pk, "label": "flu", "n": 8, "seed": 0}
    )
    assert response.status_code == 400
    assert SampleGrid.objects.count() == 0
    response = client.post(
        "/generator/", {"version": generator_version.pk, "label": "normal", "n": 999, "seed": 0}
    )
    assert response.status_code == 400
    assert SampleGrid.objects.count() == 0
    with pytest.raises(GeneratorUnavailable):
        request_grid(version=generator_version, label="normal", n=0, seed=0, requested_by=None)


def test_a_missing_generator_file_fails_the_job_with_its_reason(
    model_admin, gan_tiny_model, tmp_path
):
    copy = tmp_path / "generator.keras"
    shutil.copy(gan_tiny_model, copy)
    shutil.copy(gan_tiny_model.with_name("generator.card.json"), tmp_path / "generator.card.json")
    version, _ = register_generator(copy)
    copy.unlink()
    grid = _done_grid(version, model_admin)
    assert grid.status == "failed"
    assert "No generator" in grid.error
    assert not grid.image


def test_synthetic_images_are_refused_as_uploads(
    clinician, model_admin, generator_version, media_root
):
    grid = _done_grid(generator_version, model_admin, n=4)
    with grid.image.open("rb") as fh:
        content = fh.read()
    before = stored_files(media_root)
    with pytest.raises(UploadRejected) as caught:
        case_services.create_case(
            owner=clinician, files=[upload_of("grid.png", content, "image/png")]
        )
    assert "marked SYNTHETIC" in str(caught.value)
    assert "metadata" in str(caught.value)
    # One tile cut out, enlarged and saved as JPEG (no metadata left): the pixels say it.
    tile = Image.open(io.BytesIO(content)).convert("L").crop((4, 22, 132, 150))
    buffer = io.BytesIO()
    tile.resize((512, 512)).save(buffer, format="JPEG", quality=80)
    with pytest.raises(UploadRejected) as caught:
        case_services.create_case(owner=clinician, files=[upload_of("tile.jpg", buffer.getvalue())])
    assert "marked SYNTHETIC" in str(caught.value)
    assert "pixels" in str(caught.value)
    assert Case.objects.count() == 0
    assert CaseImage.objects.count() == 0
    assert stored_files(media_root) == before
    # A real radiograph still goes through.
    case = case_services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    assert case.images.count() == 1


def test_synthetic_images_never_enter_a_dataset_snapshot(model_admin, generator_version, tmp_path):
    grid = _done_grid(generator_version, model_admin, label="covid19", n=4)
    folder = tmp_path / "import"
    folder.mkdir()
    rows = ["path,label,patient,source"]
    for row in fixture_manifest()[:6]:
        shutil.copy(IMAGES / row["path"], folder / row["path"])
        rows.append(f"{row['path']},{row['label']},{row['patient']},{row['source']}")
    with grid.image.open("rb") as fh:
        (folder / "synthetic-grid.png").write_bytes(fh.read())
    tile = Image.open(folder / "synthetic-grid.png").convert("L").crop((4, 22, 132, 150))
    tile.save(folder / "synthetic-tile.jpg", format="JPEG", quality=85)
    rows += ["synthetic-grid.png,covid19,fake-1,covid-chestxray",
             "synthetic-tile.jpg,covid19,fake-2,covid-chestxray"]  # fmt: skip
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    result = import_reference_dataset(folder, "generic")
    assert result["created"] == 6
    assert result["synthetic_refused"] == 2
    snapshot = create_snapshot(created_by=model_admin)
    items = SnapshotItem.objects.filter(snapshot=snapshot).select_related("reference_image")
    assert items.count() == 6
    references = [item.reference_image for item in items if item.reference_image is not None]
    assert len(references) == 6
    names = {reference.original_name for reference in references}
    assert not {n for n in names if n.startswith("synthetic")}
    for reference in references:
        with reference.file.open("rb") as fh:
            assert synthetic_reason(Image.open(fh)) is None

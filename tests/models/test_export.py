"""Export of a snapshot (or of every confirmed label) in the layout that
``python -m ml classifier train`` reads back, with a JSON manifest of hashes and label
provenance."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile

import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.cases import labelling
from apps.models import export
from apps.models.datasets import create_snapshot, import_reference_dataset
from ml.data.loaders import given_splits, load_generic
from ml.models.artifacts import read_card
from tests.conftest import IMAGES, ml_cli
from tests.factories import UserFactory
from tests.models.test_snapshots import case_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def snapshot(db):
    import_reference_dataset(IMAGES / "manifest.csv", "generic")
    reader = UserFactory(username="reader-1", roles=["annotator"])
    image = case_image("IM-0133-0001.jpeg", patient_ref="PSEUDO-EXPORT-7")
    labelling.submit_label(image=image, annotator=reader, label="normal", note="clear lungs")
    return create_snapshot()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_snapshot_export_trains_one_epoch_with_ml_train_on_its_own_split(
    snapshot, tmp_path, model_admin
):
    out = tmp_path / "export"
    manifest = export.export_to_folder(snapshot=snapshot, out=out, actor=model_admin)

    # The layout: labels.csv, images/, manifest.json; every file hashed in the manifest.
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert len(rows) == snapshot.items.count() == 19
    assert set(rows[0]) == {"path", "label", "patient", "source", "split", "sha256"}
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["format"] == "cxr-export/1"
    assert on_disk["snapshot"]["content_hash"] == snapshot.content_hash
    assert on_disk["labels_csv"]["sha256"] == _sha(out / "labels.csv")
    for entry in on_disk["images"]:
        assert _sha(out / entry["path"]) == entry["sha256"]
    clinical = next(e for e in on_disk["images"] if e["source"] == "clinical")
    assert clinical["label_provenance"]["decided_by"] == "agreement"
    assert clinical["label_provenance"]["verdicts"][0]["label"] == "normal"
    assert "note" not in clinical["label_provenance"]["verdicts"][0]  # free text stays home
    assert clinical["patient"].startswith("clinical-")
    assert "PSEUDO-EXPORT-7" not in (out / "labels.csv").read_text()
    assert "PSEUDO-EXPORT-7" not in (out / "manifest.json").read_text()
    reference = next(e for e in on_disk["images"] if e["origin"]["kind"] == "reference")
    assert reference["sha256"] == reference["origin"]["source_file_sha256"]

    # ml's generic loader reads it back with the snapshot's split ...
    dataset = load_generic(out)
    assert len(dataset.records) == 19
    splits = given_splits(dataset.records)
    assert splits is not None
    split_of = {r.path.stem: split for r, split in zip(dataset.records, splits, strict=True)}
    assert split_of == {item.key: item.split for item in snapshot.items.all()}
    # ... and `python -m ml classifier train --data EXPORT` trains on that split.
    model_dir = tmp_path / "model"
    run = ml_cli(
        "classifier", "train", "--data", out, "--out", model_dir, "--epochs", "1",
        "--input-size", "64", "--width", "8", "--batch-size", "8", "--bootstrap", "20",
        "--quiet", "--no-gradcam-animation",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    card = read_card(next(model_dir.glob("*.keras")))
    assert card["data"]["images"] == 19
    assert card["data"]["split"]["source"] == "given"
    assert card["data"]["split"]["counts"] == {
        split: snapshot.items.filter(split=split).count() for split in ("train", "val", "test")
    }
    assert card["training"]["epochs_run"] == 1
    assert AuditEvent.objects.filter(
        action="dataset.export", target_id=str(snapshot.pk), actor=model_admin
    ).exists()


def test_export_into_a_folder_that_is_not_empty_is_refused_and_writes_nothing(snapshot, tmp_path):
    out = tmp_path / "exports" / "taken"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="not an empty folder"):
        export.export_to_folder(snapshot=snapshot, out=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["taken"]  # no partial folder


def test_export_with_a_missing_file_fails_and_leaves_no_partial_folder(snapshot, tmp_path):
    item = snapshot.items.filter(case_image__isnull=False).get()
    item.case_image.file.storage.delete(item.case_image.file.name)
    exports = tmp_path / "exports"
    with pytest.raises(export.ExportError, match="missing from storage"):
        export.export_to_folder(snapshot=snapshot, out=exports / "export")
    assert list(exports.iterdir()) == []


def test_confirmed_labels_export_has_no_split_and_ml_splits_it(snapshot, tmp_path):
    out = tmp_path / "confirmed"
    manifest = export.export_to_folder(snapshot=None, out=out)
    assert manifest["selection"] == "confirmed-labels"
    assert manifest["snapshot"] is None
    dataset = load_generic(out)
    assert [r.label for r in dataset.records] == ["normal"]
    assert given_splits(dataset.records) is None


def test_model_admin_downloads_a_snapshot_zip_that_unpacks_to_the_layout(
    snapshot, model_admin, login, tmp_path
):
    response = login(model_admin).get(reverse("registry:snapshot-export", args=[snapshot.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert f"snapshot-{snapshot.pk}.zip" in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    manifest = json.loads(archive.read("manifest.json"))
    assert len(manifest["images"]) == 19
    for entry in manifest["images"]:
        assert hashlib.sha256(archive.read(entry["path"])).hexdigest() == entry["sha256"]
    archive.extractall(tmp_path / "unzipped")
    assert len(load_generic(tmp_path / "unzipped").records) == 19


@pytest.mark.parametrize("role", ["clinician", "annotator", "adjudicator"])
def test_only_model_admins_export(snapshot, role, login):
    client = login(UserFactory(roles=[role]))
    assert client.get(reverse("registry:snapshot-export", args=[snapshot.pk])).status_code == 403
    assert client.get(reverse("registry:confirmed-export")).status_code == 403


def test_export_command_writes_a_zip_or_a_folder_and_refuses_to_overwrite(snapshot, tmp_path):
    from django.core.management import CommandError, call_command

    out = io.StringIO()
    call_command("export_dataset", str(tmp_path / "s.zip"), stdout=out)
    assert "19 images (snapshot" in out.getvalue()
    with zipfile.ZipFile(tmp_path / "s.zip") as archive:
        assert {"labels.csv", "manifest.json"} <= set(archive.namelist())
    call_command("export_dataset", str(tmp_path / "c"), "--confirmed", stdout=io.StringIO())
    assert (tmp_path / "c" / "labels.csv").is_file()
    with pytest.raises(CommandError, match="exists"):
        call_command("export_dataset", str(tmp_path / "s.zip"), stdout=io.StringIO())
    with pytest.raises(CommandError, match="No snapshot 999"):
        call_command("export_dataset", str(tmp_path / "x"), "--snapshot", "999")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "media", "s.zip"]

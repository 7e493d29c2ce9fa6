"""A case its clinician deleted is gone at once from what a snapshot gives out, before its
purge: the snapshot's web and API exports and the records a training run reads skip its
images, as every page and the next snapshot do."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from apps.cases import retention
from apps.cases.models import CaseImage
from apps.models.datasets import ITEM_IMAGES
from apps.models.models import DatasetSnapshot, SnapshotItem
from apps.models.training import _records
from tests.models.test_snapshots import case_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def snapshot_with_a_deleted_case(db) -> tuple[DatasetSnapshot, CaseImage, CaseImage]:
    """A snapshot of two clinical images; the second one's clinician then deleted the case
    (not purged yet)."""
    kept = case_image("IM-0133-0001.jpeg", patient_ref="PSEUDO-KEPT")
    deleted = case_image("2168a917.jpg", patient_ref="PSEUDO-DELETED")
    snapshot = DatasetSnapshot.objects.create(content_hash="two-images")
    for image, split in ((kept, "train"), (deleted, "test")):
        SnapshotItem.objects.create(
            snapshot=snapshot,
            case_image=image,
            label="normal",
            split=split,
            patient=f"clinical-{image.case.patient_ref}",
            source="clinical",
            pixel_sha256=image.sha256,
        )
    retention.delete_case(actor=deleted.case.owner, case=deleted.case)
    return snapshot, kept, deleted


def _exported_keys(response) -> tuple[set[str], dict]:
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    rows = list(csv.DictReader(io.StringIO(archive.read("labels.csv").decode())))
    manifest = json.loads(archive.read("manifest.json"))
    return {row["path"].split("/")[-1].split(".")[0] for row in rows}, manifest


def test_the_web_export_of_a_snapshot_skips_a_deleted_cases_images(
    snapshot_with_a_deleted_case, model_admin, login
):
    snapshot, kept, _deleted = snapshot_with_a_deleted_case
    response = login(model_admin).get(reverse("registry:snapshot-export", args=[snapshot.pk]))
    assert response.status_code == 200
    keys, manifest = _exported_keys(response)
    assert keys == {f"case-{kept.pk}"}
    assert [entry["origin"]["image_id"] for entry in manifest["images"]] == [kept.pk]
    assert manifest["counts"]["total"] == 1


def test_the_api_export_of_a_snapshot_skips_a_deleted_cases_images(
    snapshot_with_a_deleted_case, model_admin
):
    snapshot, kept, deleted = snapshot_with_a_deleted_case
    api = APIClient()
    api.force_authenticate(model_admin)
    response = api.get(f"/api/v1/snapshots/{snapshot.pk}/export/")
    assert response.status_code == 200
    keys, manifest = _exported_keys(response)
    assert keys == {f"case-{kept.pk}"}
    assert f"case-{deleted.pk}" not in json.dumps(manifest)


def test_training_on_a_snapshot_skips_a_deleted_cases_images(
    snapshot_with_a_deleted_case, tmp_path
):
    snapshot, kept, _deleted = snapshot_with_a_deleted_case
    items = list(
        SnapshotItem.objects.filter(snapshot=snapshot).select_related(*ITEM_IMAGES).order_by("pk")
    )
    records, splits = _records(items, tmp_path)
    assert [(record.patient, split) for record, split in zip(records, splits, strict=True)] == [
        ("clinical-PSEUDO-KEPT", "train")
    ]
    assert records[0].path.name == Path(kept.file.name).name

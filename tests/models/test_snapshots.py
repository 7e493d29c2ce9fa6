"""Dataset snapshots that mean what they say: each image's current
confirmed label, no patient in two splits, one item per picture across reference and
clinical data, and counts by split x class x source with what changed."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from apps.cases import labelling
from apps.cases.models import CaseImage
from apps.models.datasets import create_snapshot, import_reference_dataset
from apps.models.models import DatasetSnapshot, ReferenceImage, SnapshotItem
from tests.conftest import IMAGES
from tests.factories import PredictionFactory, UserFactory

pytestmark = pytest.mark.django_db


def variant_png(name: str, shift: int = 1) -> tuple[bytes, int, int]:
    """Another picture made from a fixture (one corner pixel changed), as a PNG."""
    with Image.open(IMAGES / name) as image:
        pixels = np.array(image.convert("L"))
    pixels[0, 0] = (int(pixels[0, 0]) + shift) % 256
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), pixels.shape[1], pixels.shape[0]


def case_image(fixture: str = "2168a917.jpg", *, patient_ref: str = "", copy: bool = False):
    """A clinical image with a finished prediction: a new picture made from ``fixture``,
    or with ``copy`` the fixture's own picture (the same picture as a reference image)."""
    extra = {} if copy else {"image__source": variant_png(fixture)}
    prediction = PredictionFactory(
        image__fixture=fixture, image__case__patient_ref=patient_ref, **extra
    )
    return prediction.image


@pytest.fixture
def references(db):
    result = import_reference_dataset(IMAGES / "manifest.csv", "generic")
    assert result["created"] == 18
    return ReferenceImage.objects.all()


@pytest.fixture
def reader(db):
    return UserFactory(username="reader-1", roles=["annotator"])


def _item(snapshot: DatasetSnapshot, image: CaseImage) -> SnapshotItem | None:
    return snapshot.items.filter(case_image=image).first()


def _one(snapshot: DatasetSnapshot, image: CaseImage) -> SnapshotItem:
    item = _item(snapshot, image)
    assert item is not None, f"{image} is not in snapshot {snapshot.pk}"
    return item


# -- the current confirmed label --------------------------------------------------------


def test_a_corrected_label_reaches_the_next_snapshot_in_the_same_split(references, reader):
    image = case_image()
    labelling.submit_label(image=image, annotator=reader, label="covid19")
    first = create_snapshot()
    assert (_one(first, image).label, _one(first, image).split) == ("covid19", "train")

    labelling.submit_label(image=image, annotator=reader, label="pneumonia", note="on review")
    second = create_snapshot()
    item = _one(second, image)
    assert (item.label, item.split) == ("pneumonia", "train")
    assert second.changes["relabelled"] == [
        {"key": f"case-{image.pk}", "split": "train", "from": "covid19", "to": "pneumonia"}
    ]
    # The label's provenance is frozen with the item: the reader's revised verdict.
    assert item.provenance["kind"] == "clinical"
    assert item.provenance["decided_by"] == "agreement"
    assert [v["label"] for v in item.provenance["verdicts"]] == ["pneumonia"]
    assert item.provenance["verdicts"][0]["reader"] == f"reader-{reader.pk}"
    # The earlier snapshot is frozen: it keeps the label it was made with.
    assert _one(first, image).label == "covid19"


def test_an_image_judged_unusable_after_a_snapshot_leaves_the_next_one(references, reader):
    image = case_image()
    labelling.submit_label(image=image, annotator=reader, label="normal")
    first = create_snapshot()
    assert _item(first, image) is not None
    assert first.counts["clinical"] == 1

    labelling.submit_label(image=image, annotator=reader, label="unusable", note="rotated")
    second = create_snapshot()
    assert _item(second, image) is None
    assert second.counts["clinical"] == 0
    assert second.changes["removed"] == [
        {
            "reason": "judged unusable",
            "split": "train",
            "label": "normal",
            "source": "clinical",
            "n": 1,
        }
    ]


def test_a_label_no_longer_agreed_leaves_and_an_adjudicated_one_enters(
    references, reader, settings
):
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "adjudication", 1
    other = UserFactory(username="reader-2", roles=["annotator"])
    adjudicator = UserFactory(username="senior", roles=["adjudicator"])
    image = case_image()
    labelling.submit_label(image=image, annotator=reader, label="covid19")
    first = create_snapshot()
    assert _one(first, image).label == "covid19"

    labelling.submit_label(image=image, annotator=other, label="pneumonia")  # now disputed
    second = create_snapshot()
    assert _item(second, image) is None
    assert second.changes["removed"][0]["reason"].startswith("no longer confirmed")

    labelling.adjudicate(image=image, adjudicator=adjudicator, label="pneumonia", note="RLL")
    third = create_snapshot()
    item = _one(third, image)
    assert item.label == "pneumonia"
    assert item.provenance["decided_by"] == "adjudication"
    assert item.provenance["adjudication"]["adjudicator"] == f"reader-{adjudicator.pk}"
    assert sorted(v["label"] for v in item.provenance["verdicts"]) == ["covid19", "pneumonia"]


def test_a_test_image_that_leaves_and_is_confirmed_again_returns_to_test(
    references, reader, settings
):
    first = create_snapshot()
    in_test = _test_reference(first)
    copy = case_image(in_test.original_name, patient_ref="P-5", copy=True)
    new = case_image("IM-0147-0001.jpeg", patient_ref="P-5")  # in test through its patient
    for image in (copy, new):
        labelling.submit_label(image=image, annotator=reader, label="normal")
    assert _one(create_snapshot(), new).split == "test"

    # The patient link goes (the copy is judged unusable) and two readers are now needed:
    # a revised verdict leaves `new` unconfirmed, so it leaves the next snapshot ...
    labelling.submit_label(image=copy, annotator=reader, label="unusable")
    settings.CXR_LABEL_AGREEMENT = 2
    labelling.submit_label(image=new, annotator=reader, label="pneumonia")
    assert _item(create_snapshot(), new) is None
    # ... and once confirmed again it returns to test, not to train.
    other = UserFactory(username="reader-2", roles=["annotator"])
    labelling.submit_label(image=new, annotator=other, label="pneumonia")
    assert _one(create_snapshot(), new).split == "test"


# -- no leakage between splits, one item per picture -----------------------------------


def _test_reference(snapshot: DatasetSnapshot) -> ReferenceImage:
    item = snapshot.items.filter(split="test").select_related("reference_image")[0]
    assert item.reference_image is not None
    return item.reference_image


def test_a_case_copy_of_a_test_image_is_left_out_and_its_patient_goes_to_test(references, reader):
    first = create_snapshot()
    in_test = _test_reference(first)
    # The same clinical patient: a copy of a test image and a new picture.
    copy = case_image(in_test.original_name, patient_ref="P-9", copy=True)
    new = case_image("IM-0147-0001.jpeg", patient_ref="P-9")
    for image in (copy, new):
        labelling.submit_label(image=image, annotator=reader, label=in_test.label)

    second = create_snapshot()
    assert _item(second, copy) is None  # the picture is already in as the reference image
    assert second.changes["duplicates_left_out"] == [
        {
            "key": f"case-{copy.pk}",
            "label": in_test.label,
            "same_as": f"ref-{in_test.pk}",
            "kept_label": in_test.label,
        }
    ]
    assert _one(second, new).split == "test"  # its patient is in test
    assert second.items.filter(reference_image=in_test, split="test").count() == 1


def test_the_same_picture_uploaded_twice_is_one_item(references, reader):
    a = case_image("IM-0147-0001.jpeg", patient_ref="P-1")
    b = PredictionFactory(
        image__fixture="IM-0147-0001.jpeg",
        image__case__patient_ref="P-2",
        image__source=variant_png("IM-0147-0001.jpeg"),
    ).image
    for image in (a, b):
        labelling.submit_label(image=image, annotator=reader, label="normal")
    snapshot = create_snapshot()
    assert snapshot.items.filter(case_image__in=[a, b]).count() == 1
    assert snapshot.counts["clinical"] == 1


def test_reference_copies_in_one_import_are_one_item_with_their_patients_joined(db, tmp_path):
    # The same picture under two patients (a JPEG and its PNG re-encoding), plus a second
    # image of the second patient: the three must land in one split.
    folder = tmp_path / "dup"
    folder.mkdir()
    content, _, _ = variant_png("2168a917.jpg", shift=0)
    (folder / "copy.png").write_bytes(content)
    (folder / "second.png").write_bytes(variant_png("5f619d7e.jpg")[0])
    rows = [("copy.png", "covid19", "cc-900"), ("second.png", "covid19", "cc-900")]
    with (folder / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient", "source"])
        writer.writerows(rows)
    import_reference_dataset(IMAGES / "manifest.csv", "generic")
    assert import_reference_dataset(folder, "generic")["created"] == 2
    snapshot = create_snapshot()
    assert snapshot.counts["total"] == 19  # 20 files, 19 pictures
    original = ReferenceImage.objects.get(original_name="2168a917.jpg")
    second = ReferenceImage.objects.get(original_name="second.png")
    kept = snapshot.items.get(reference_image=original)
    assert not snapshot.items.filter(reference_image__original_name="copy.png").exists()
    assert snapshot.items.get(reference_image=second).split == kept.split


def test_reference_images_imported_later_follow_their_patients_split(references, tmp_path):
    first = create_snapshot()
    in_test = _test_reference(first)
    folder = tmp_path / "later"
    folder.mkdir()
    (folder / "follow-up.png").write_bytes(variant_png(in_test.original_name)[0])
    (folder / "new-patient.png").write_bytes(variant_png("IM-0133-0001.jpeg")[0])
    with (folder / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient", "source"])
        writer.writerow(["follow-up.png", in_test.label, in_test.patient, in_test.source])
        writer.writerow(["new-patient.png", "normal", "ped-IM-9999", "pediatric-pneumonia"])
    assert import_reference_dataset(folder, "generic")["created"] == 2

    second = create_snapshot()
    split = dict(second.items.values_list("reference_image__original_name", "split"))
    assert split["follow-up.png"] == "test"
    assert split["new-patient.png"] == "train"
    # The test split only grows: every test item of the first snapshot is still there.
    assert set(first.items.filter(split="test").values_list("reference_image", flat=True)) <= set(
        second.items.filter(split="test").values_list("reference_image", flat=True)
    )


def test_a_patient_leaked_into_train_by_an_older_snapshot_moves_to_test(references):
    first = create_snapshot()
    in_test = first.items.filter(split="test")[0]
    # What the old code did: a later reference image of a test patient put in train.
    assert in_test.reference_image_id is not None
    later = ReferenceImage.objects.exclude(pk=in_test.reference_image_id).exclude(
        pk__in=first.items.filter(split="test").values("reference_image")
    )[0]
    ReferenceImage.objects.filter(pk=later.pk).update(patient=in_test.patient)
    SnapshotItem.objects.filter(snapshot=first, reference_image=later).update(
        patient=in_test.patient
    )
    was = first.items.get(reference_image=later).split
    second = create_snapshot()
    assert second.items.get(reference_image=later).split == "test"
    assert second.changes["moved"] == [{"key": f"ref-{later.pk}", "from": was, "to": "test"}]


# -- counts by split x class x source, and what changed ---------------------------------


def test_counts_by_split_class_and_source_add_up(references, reader):
    image = case_image()
    labelling.submit_label(image=image, annotator=reader, label="covid19")
    snapshot = create_snapshot()
    rows = snapshot.counts["by_split_class_source"]
    assert sum(r["n"] for r in rows) == snapshot.items.count() == snapshot.counts["total"] == 19
    for row in rows:
        assert (
            snapshot.items.filter(
                split=row["split"], label=row["label"], source=row["source"]
            ).count()
            == row["n"]
        )
    assert {"split": "train", "label": "covid19", "source": "clinical", "n": 1} in rows
    assert {r["source"] for r in rows} == {
        "clinical",
        "covid-chestxray",
        "pediatric-pneumonia",
        "adult-normal",
    }


def test_snapshot_page_shows_counts_and_changes_since_the_previous_one(
    references, reader, model_admin, login
):
    image = case_image()
    labelling.submit_label(image=image, annotator=reader, label="covid19")
    first = create_snapshot()
    labelling.submit_label(image=image, annotator=reader, label="pneumonia")
    added = case_image("IM-0133-0001.jpeg", patient_ref="P-3")
    labelling.submit_label(image=added, annotator=reader, label="normal")
    second = create_snapshot()

    client = login(model_admin)
    page = client.get(reverse("registry:snapshot", args=[second.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    table = page.context["table"]
    assert {"split": "train", "label": "normal", "source": "clinical", "n": 1} in second.counts[
        "by_split_class_source"
    ]
    assert any(row["source"] == "clinical" for row in table)
    assert f"since snapshot {first.pk}" in html
    for shown in ("Relabelled", "covid19", "pneumonia"):
        assert shown in html
    assert second.changes["added"] == [
        {"split": "train", "label": "normal", "source": "clinical", "n": 1}
    ]
    listing = client.get(reverse("registry:snapshots"))
    assert listing.status_code == 200
    assert reverse("registry:snapshot", args=[first.pk]) in listing.content.decode()


@pytest.mark.parametrize("role", ["clinician", "annotator", "adjudicator"])
def test_only_model_admins_see_snapshots(references, role, login):
    snapshot = create_snapshot()
    client = login(UserFactory(roles=[role]))
    assert client.get(reverse("registry:snapshot", args=[snapshot.pk])).status_code == 403
    assert client.get(reverse("registry:snapshots")).status_code == 403

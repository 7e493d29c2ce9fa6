"""ml.research.split_leak: duplicate radiographs across splits (the same image, or the
same patient under another id) are found, and a model's test figures are given with and
without the leaked patients' test images."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from ml.research.split_leak import (
    Item,
    cross_split_pairs,
    leaked_test_images,
    main,
    pixel_hash,
    split_figures,
    thumbnail,
)
from tests.conftest import IMAGES, fixture_manifest


def _items(tmp_path):
    """Four fixture films: a pixel copy of one in another split, a brightened copy of
    another in another split, an unrelated film, and a copy within one split."""
    rows = {r["path"]: r for r in fixture_manifest()}
    a, b, c = "2168a917.jpg", "00001280_004.jpg", "IM-0117-0001.jpeg"
    copy_a = tmp_path / "copy_a.png"
    Image.open(IMAGES / a).convert("L").save(copy_a)  # another file, the same pixels
    bright_b = tmp_path / "bright_b.png"
    ImageEnhance.Brightness(Image.open(IMAGES / b).convert("L")).enhance(1.15).save(bright_b)
    same_split = tmp_path / "same_split.png"
    Image.open(IMAGES / c).convert("L").save(same_split)
    specs = [
        (IMAGES / a, "pa", "train"), (copy_a, "pa-alias", "test"),
        (IMAGES / b, "pb", "train"), (bright_b, "pb-alias", "val"),
        (IMAGES / c, "pc", "test"), (same_split, "pc2", "test"),
    ]  # fmt: skip
    items = []
    for path, patient, split in specs:
        label = rows[path.name]["label"] if path.name in rows else "covid19"
        items.append(Item(f"x/{path.name}", path, patient, label, "covid-chestxray", split))
    return items


def _features(items: list[Item]) -> tuple[np.ndarray, list[str]]:
    thumbs, hashes = [], []
    for item in items:
        gray = Image.open(item.path).convert("L")
        thumbs.append(thumbnail(gray))
        hashes.append(pixel_hash(gray))
    return np.stack(thumbs), hashes


def test_pixel_copies_and_near_copies_across_splits_are_found_not_within_one(tmp_path):
    items = _items(tmp_path)
    pairs = cross_split_pairs(items, *_features(items), threshold=0.97)
    found = {(p.a.patient, p.b.patient, p.identical) for p in pairs}
    assert found == {("pa", "pa-alias", True), ("pb", "pb-alias", False)}
    first = pairs[0]  # identical first, the lower split on the left
    assert (first.a.split, first.b.split, first.correlation) == ("train", "test", 1.0)
    near = pairs[1]
    assert 0.97 <= near.correlation < 1.0
    assert (near.a.split, near.b.split) == ("train", "val")
    # The unrelated film is no candidate even at a low threshold across splits.
    loose = cross_split_pairs(items, *_features(items), threshold=0.5)
    assert all("IM-0117" not in p.a.key + p.b.key or p.a.split != p.b.split for p in loose)


@pytest.mark.slow
def test_figures_without_the_leaked_patients_drop_their_test_images():
    rows = [
        {"patient": "leak", "label": "covid19", "pred": "covid19", "source": "covid-chestxray",
         "p_covid19": 0.9},
        {"patient": "p1", "label": "covid19", "pred": "normal", "source": "covid-chestxray",
         "p_covid19": 0.4},
        {"patient": "p2", "label": "normal", "pred": "normal", "source": "covid-chestxray",
         "p_covid19": 0.2},
        {"patient": "p3", "label": "pneumonia", "pred": "pneumonia", "source": "nih-cxr14",
         "p_covid19": 0.1},
    ]  # fmt: skip
    classes = ("covid19", "pneumonia", "normal")
    everything = split_figures(rows, classes)
    assert everything["covid19_recall"] == 0.5
    assert everything["ccx_images"] == 3
    assert everything["ccx_covid_auroc"] == 1.0
    clean = split_figures([r for r in rows if r["patient"] != "leak"], classes)
    assert clean["covid19_recall"] == 0.0
    assert clean["images"] == 3
    assert np.isnan(clean["covid19_recall_ci"]).all()  # one COVID-19 image: no interval
    low, high = everything["macro_f1_ci"]
    assert low <= everything["macro_f1"] <= high


def test_leaked_test_images_are_every_test_image_of_a_confirmed_patient(tmp_path):
    items = _items(tmp_path)
    leaked = leaked_test_images(items, {"pa-alias", "pb"})
    assert [i.patient for i in leaked] == ["pa-alias"]  # pb's film is in train


def test_the_command_writes_pairs_and_figures(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    manifest = fixture_manifest()[:6]
    for row in manifest:
        shutil.copy(IMAGES / row["path"], data / "images" / row["path"])
    leaked = manifest[0]
    shutil.copy(IMAGES / leaked["path"], data / "images" / "alias.jpg")
    with (data / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient", "source"])
        for row in manifest:
            writer.writerow([f"images/{row['path']}", row["label"], row["patient"], "fx"])
        writer.writerow(["images/alias.jpg", leaked["label"], "alias", "fx"])
    splits = tmp_path / "splits.csv"
    with splits.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "patient", "label", "source", "split"])
        for k, row in enumerate(manifest):
            writer.writerow([f"fx/{row['path']}", row["patient"], row["label"], "fx",
                             "train" if k < 3 else "test"])  # fmt: skip
        writer.writerow(["fx/alias.jpg", "alias", leaked["label"], "fx", "test"])
    out = tmp_path / "out"
    assert main(["--data", str(data), "--splits", str(splits), "--out", str(out)]) == 0
    with (out / "pairs.csv").open(newline="") as fh:
        pairs = list(csv.DictReader(fh))
    assert [(p["key_a"], p["key_b"], p["identical"]) for p in pairs] == [
        (f"fx/{leaked['path']}", "fx/alias.jpg", "1")
    ]
    figures = json.loads((out / "figures.json").read_text())
    assert (figures["images"], figures["identical_pairs"]) == (7, 1)
    assert Image.open(out / "pairs.png").size == (384, 206)
    assert "1 cross-split candidate pairs (1 pixel-identical)" in capsys.readouterr().out


def test_distinct_fixture_films_are_not_near_copies():
    rows = fixture_manifest()
    items = [
        Item(r["path"], IMAGES / r["path"], r["patient"], r["label"], r["source"],
             ("train", "val", "test")[k % 3])
        for k, r in enumerate(rows)
    ]  # fmt: skip
    assert cross_split_pairs(items, *_features(items), threshold=0.97) == []

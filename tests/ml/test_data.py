import shutil

import pytest

from ml.data.loaders import (
    MappingExclusion,
    detect_layout,
    load_covid_chestxray,
    load_dataset,
    load_generic,
    load_many,
    load_nih,
    load_pediatric,
    map_covid_finding,
)
from tests.conftest import FIXTURES, IMAGES

COVID_LAYOUT = FIXTURES / "layouts" / "covid-chestxray"


@pytest.mark.parametrize(
    ("finding", "label"),
    [
        ("COVID-19", "covid19"),
        ("COVID-19, ARDS", "covid19"),
        ("Pneumonia/Viral/COVID-19", "covid19"),
        ("No Finding", "normal"),
        ("Streptococcus", "pneumonia"),
        ("Pneumocystis", "pneumonia"),
        ("SARS", "pneumonia"),
        ("Mycoplasma Bacterial Pneumonia", "pneumonia"),
        ("Pneumonia/Fungal/Aspergillosis", "pneumonia"),
    ],
)
def test_label_mapping_v1(finding, label):
    assert map_covid_finding(finding) == label


@pytest.mark.parametrize(
    ("finding", "reason"),
    [
        ("ARDS", "non-infectious finding (ARDS, lipoid)"),
        ("Lipoid", "non-infectious finding (ARDS, lipoid)"),
        ("todo", "finding not labelled upstream (todo)"),
        ("Chest trauma", "unknown finding: Chest trauma"),
    ],
)
def test_label_mapping_excludes_with_a_reason(finding, reason):
    with pytest.raises(MappingExclusion) as excinfo:
        map_covid_finding(finding)
    assert excinfo.value.reason == reason


def test_covid_loader_keeps_frontal_xrays_and_counts_every_exclusion():
    dataset = load_covid_chestxray(COVID_LAYOUT)
    by_name = {r.path.name: r for r in dataset.records}
    assert set(by_name) == {
        "2168a917.jpg",
        "5f619d7e.jpg",
        "4d98e1de.jpg",
        "f6575117.jpg",
        "pneumocystis-pneumonia-1.jpg",
        "X-ray_of_cyst_in_pneumocystis_pneumonia_1.jpg",
        "000001-24.jpg",
    }
    assert by_name["2168a917.jpg"].label == "covid19"
    assert by_name["f6575117.jpg"].label == "normal"
    assert by_name["pneumocystis-pneumonia-1.jpg"].label == "pneumonia"
    assert dict(dataset.excluded) == {
        "modality CT (not X-ray)": 1,
        "view L (not frontal)": 1,
        "finding not labelled upstream (todo)": 1,
        "unknown finding: Unusual thing": 1,
        "non-infectious finding (ARDS, lipoid)": 1,
        "image file missing": 1,
        "duplicate row for an image already kept": 1,
    }


def test_covid_loader_merges_patients_that_share_an_image():
    """000001-24.jpg is listed under patients 285 and 339 upstream: one patient."""
    dataset = load_covid_chestxray(COVID_LAYOUT)
    record = next(r for r in dataset.records if r.path.name == "000001-24.jpg")
    assert record.patient == "cc-285"


@pytest.fixture
def pediatric_layout(tmp_path):
    root = tmp_path / "pediatric"
    picks = {
        ("train", "NORMAL"): ["IM-0117-0001.jpeg", "IM-0133-0001.jpeg"],
        ("train", "PNEUMONIA"): ["person1003_virus_1685.jpeg", "person1007_bacteria_2938.jpeg"],
        ("test", "NORMAL"): ["IM-0147-0001.jpeg"],
        ("test", "PNEUMONIA"): ["person1018_virus_1706.jpeg"],
    }
    for (split, folder), names in picks.items():
        (root / split / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(IMAGES / name, root / split / folder / name)
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    return root


def test_pediatric_loader_reads_labels_patients_and_subtypes(pediatric_layout):
    dataset = load_pediatric(pediatric_layout)
    assert len(dataset.records) == 6
    by_name = {r.path.name: r for r in dataset.records}
    virus = by_name["person1003_virus_1685.jpeg"]
    assert (virus.label, virus.patient) == ("pneumonia", "ped-person1003")
    assert dict(virus.meta) == {"upstream_split": "train", "subtype": "virus"}
    normal = by_name["IM-0147-0001.jpeg"]
    assert (normal.label, normal.patient) == ("normal", "ped-im-0147")
    assert dict(dataset.excluded) == {"not an image file": 1}
    assert detect_layout(pediatric_layout) == "pediatric"


def test_nih_loader_reads_labels_csv(tmp_path):
    root = tmp_path / "adult-normal"
    (root / "images").mkdir(parents=True)
    shutil.copy(IMAGES / "00001280_004.jpg", root / "images")
    (root / "labels.csv").write_text(
        "filename,patient_id,label,view,source,original_filename,age,sex,follow_up\n"
        "00001280_004.jpg,nih-1280,normal,PA,NIH ChestX-ray14 (No Finding),"
        "00001280_004.png,36,F,4\n"
        "00009999_000.jpg,nih-9999,normal,PA,NIH,00009999_000.png,40,M,0\n"
    )
    assert detect_layout(root) == "nih"
    dataset = load_nih(root)
    assert [(r.label, r.patient, r.source) for r in dataset.records] == [
        ("normal", "nih-1280", "nih-cxr14")
    ]
    assert dict(dataset.excluded) == {"image file missing": 1}


def test_generic_csv_layout_is_the_fixture_manifest():
    dataset = load_generic(IMAGES / "manifest.csv")
    assert len(dataset.records) == 18
    assert dataset.counts() == {
        "covid-chestxray": {"covid19": 6, "pneumonia": 2, "normal": 1},
        "pediatric-pneumonia": {"covid19": 0, "pneumonia": 4, "normal": 3},
        "adult-normal": {"covid19": 0, "pneumonia": 0, "normal": 2},
    }


def test_generic_folder_per_class_layout(tmp_path):
    for label, name in (("covid19", "2168a917.jpg"), ("normal", "00001280_004.jpg")):
        (tmp_path / label).mkdir()
        shutil.copy(IMAGES / name, tmp_path / label / name)
    dataset = load_dataset(tmp_path)
    assert sorted((r.label, r.path.name) for r in dataset.records) == [
        ("covid19", "2168a917.jpg"),
        ("normal", "00001280_004.jpg"),
    ]


def _generic_csv(tmp_path, splits: list[str]):
    rows = ["path,label,patient,source,split"]
    for name, split in zip(("2168a917.jpg", "00001280_004.jpg"), splits, strict=True):
        shutil.copy(IMAGES / name, tmp_path / name)
        rows.append(f"{name},normal,p-{name},src,{split}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_generic_csv_split_column_is_read_back_as_the_given_split(tmp_path):
    from ml.data.loaders import given_splits

    dataset = load_dataset(_generic_csv(tmp_path, ["train", "test"]))
    assert given_splits(dataset.records) == ["train", "test"]
    assert given_splits(load_generic(IMAGES / "manifest.csv").records) is None


def test_generic_csv_with_a_split_on_some_rows_or_an_unknown_split_is_an_error(tmp_path):
    from ml.data.loaders import given_splits

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    partial = load_dataset(_generic_csv(tmp_path / "a", ["train", ""]))
    with pytest.raises(ValueError, match="1 of 2 images have no split"):
        given_splits(partial.records)
    with pytest.raises(ValueError, match="split 'holdout'"):
        load_dataset(_generic_csv(tmp_path / "b", ["train", "holdout"]))


def test_unknown_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no labels\.csv and no class folders"):
        load_dataset(tmp_path)


def test_content_hash_changes_with_membership_and_labels():
    first = load_many([COVID_LAYOUT])
    second = load_many([COVID_LAYOUT])
    assert first.content_hash() == second.content_hash()
    second.records = second.records[:-1]
    assert first.content_hash() != second.content_hash()


@pytest.mark.shared_data
def test_shared_datasets_load_with_documented_counts(shared_datasets):
    """The shared folders' published image counts, after the project's label mapping."""
    folders = ("covid-chestxray", "pediatric-pneumonia", "adult-normal", "adult-pneumonia")
    dataset = load_many([shared_datasets / n for n in folders])
    assert dataset.counts() == {
        "covid-chestxray": {"covid19": 427, "pneumonia": 74, "normal": 19},
        "pediatric-pneumonia": {"covid19": 0, "pneumonia": 250, "normal": 250},
        "nih-cxr14": {"covid19": 0, "pneumonia": 373, "normal": 383},
    }
    assert dataset.sources == ["covid-chestxray", "pediatric-pneumonia", "nih-cxr14"]
    # 17 NIH patients have images in both folders: one patient key each, so a
    # patient-level split keeps them on one side.
    nih_patients: dict[str, set[str]] = {}
    for record in dataset.records:
        if record.source == "nih-cxr14":
            nih_patients.setdefault(record.patient, set()).add(record.label)
    assert sum(1 for labels in nih_patients.values() if len(labels) == 2) == 17
    assert dict(dataset.excluded) == {
        "duplicate row for an image already kept": 4,
        "non-infectious finding (ARDS, lipoid)": 7,
    }

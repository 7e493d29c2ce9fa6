"""Patients published twice under two ids are one patient before any split is drawn."""

import pytest

from ml.data.loaders import PATIENT_ALIASES, load_covid_chestxray, patient_aliases
from ml.data.splits import patients_in_several_splits, split_records


def test_the_alias_table_names_pairs_of_covid_chestxray_patients():
    pairs = patient_aliases("covid-chestxray", PATIENT_ALIASES)
    assert ("cc-78", "cc-201") in pairs
    assert ("cc-97", "cc-178") in pairs
    assert all(a.startswith("cc-") for a, _ in pairs)
    assert all(b.startswith("cc-") for _, b in pairs)
    assert patient_aliases("pediatric-pneumonia", PATIENT_ALIASES) == []


@pytest.mark.slow
def test_aliased_patients_never_land_in_two_splits(shared_datasets):
    dataset = load_covid_chestxray(shared_datasets / "covid-chestxray")
    patient_of = {r.path.name: r.patient for r in dataset.records}
    # The pixel-identical pair found by ml.research.split_leak, and the four copies of cc-97.
    assert (
        patient_of["353889E0-A1E8-4F9E-A0B8-F24F36BCFBFB.jpeg"]
        == patient_of["case_72_RX-TORACE1.jpg"]
    )
    assert (
        patient_of["16660_2_1.jpg"]
        == patient_of[
            "covid-19-rapidly-progressive-acute-respiratory-distress-syndrome-ards-admission.jpg"
        ]
    )
    for seed in range(5):
        splits = split_records(
            dataset.records, val_fraction=0.15, test_fraction=0.15, seed=seed, level="patient"
        )
        assert not patients_in_several_splits(dataset.records, splits)
        for a, b in patient_aliases("covid-chestxray"):
            ka = {s for r, s in zip(dataset.records, splits, strict=True) if r.patient in (a, b)}
            assert len(ka) <= 1

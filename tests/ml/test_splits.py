from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.data.labels import CLASSES
from ml.data.loaders import Record
from ml.data.splits import patients_in_several_splits, split_records

record_lists = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=60),  # patient id: many images share one
        st.sampled_from(CLASSES),
        st.sampled_from(["covid-chestxray", "pediatric-pneumonia", "adult-normal"]),
    ),
    min_size=40,
    max_size=250,
)


def _records(rows):
    return [
        Record(path=Path(f"img{i}.jpg"), label=label, patient=f"p{pid}", source=source)
        for i, (pid, label, source) in enumerate(rows)
    ]


@settings(max_examples=40, deadline=None)
@given(rows=record_lists, seed=st.integers(min_value=0, max_value=10_000))
@pytest.mark.slow
def test_patient_level_split_never_puts_a_patient_in_two_splits(rows, seed):
    records = _records(rows)
    if len({r.patient for r in records}) < 10:
        return  # too few patients to hold out a test and a validation set
    splits = split_records(records, seed=seed)
    assert len(splits) == len(records)
    assert set(splits) <= {"train", "val", "test"}
    assert patients_in_several_splits(records, splits) == set()


def test_split_is_reproducible_with_a_seed_and_changes_with_another():
    rows = [(i // 2, CLASSES[i % 3], "covid-chestxray") for i in range(300)]
    records = _records(rows)
    assert split_records(records, seed=1) == split_records(records, seed=1)
    assert split_records(records, seed=1) != split_records(records, seed=2)


def test_split_sizes_follow_the_fractions_and_keep_every_class_in_test():
    rows = [(i, CLASSES[i % 3], "covid-chestxray") for i in range(600)]
    splits = split_records(_records(rows), val_fraction=0.15, test_fraction=0.15, seed=0)
    counts = Counter(splits)
    assert 0.12 <= counts["test"] / 600 <= 0.18
    assert 0.12 <= counts["val"] / 600 <= 0.18
    test_labels = {row[1] for row, s in zip(rows, splits, strict=True) if s == "test"}
    assert test_labels == set(CLASSES)


def test_image_level_split_leaks_patients_which_is_why_it_is_not_the_default():
    rows = [(i // 3, CLASSES[(i // 3) % 3], "covid-chestxray") for i in range(300)]
    records = _records(rows)
    assert patients_in_several_splits(records, split_records(records, level="image"))
    assert not patients_in_several_splits(records, split_records(records, level="patient"))


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="sum to less than 1"):
        split_records(_records([(1, "normal", "x")] * 10), val_fraction=0.5, test_fraction=0.5)

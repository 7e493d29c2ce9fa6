"""Train/validation/test splits.

Patient-level, stratified splits are the default: an image-level split puts
follow-up images of one patient in train and test, and the model is then
graded on patients it has memorised (a known source of inflated published
numbers on these datasets). ``level="image"`` exists only so the study can
show that difference.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

from ml.data.loaders import Record

SPLITS = ("train", "val", "test")


def _stratum(record: Record) -> str:
    # Stratify by class *and* source so every split sees every (class, source)
    # combination, which the per-source evaluation needs.
    return f"{record.label}|{record.source}"


def _group_holdout(
    strata: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, holdout) with ~``fraction`` of the items in holdout, no group in both."""
    n_splits = max(2, round(1 / fraction))
    folder = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Small strata cannot be spread over every fold; stratification is then
        # best-effort, which is all a held-out split needs.
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        try:
            rest, holdout = next(folder.split(np.zeros(len(strata)), strata, groups))
        except ValueError:
            # Every stratum is smaller than the number of folds: group-only split.
            shuffler = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
            rest, holdout = next(shuffler.split(np.zeros(len(strata)), strata, groups))
    return rest, holdout


def split_records(
    records: Sequence[Record],
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    level: str = "patient",
) -> list[str]:
    """The split name ("train", "val" or "test") of each record, in order."""
    if level not in {"patient", "image"}:
        raise ValueError(f"level must be 'patient' or 'image', not {level!r}.")
    if not 0 < test_fraction < 1 or not 0 < val_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1.")
    n = len(records)
    strata = np.array([_stratum(r) for r in records])
    # Strata too small to stratify fall back to the class alone.
    values, counts = np.unique(strata, return_counts=True)
    rare = set(values[counts < 3])
    strata = np.array([r.label if s in rare else s for r, s in zip(records, strata, strict=True)])
    assignment = np.empty(n, dtype=object)
    if level == "patient":
        groups = np.array([r.patient for r in records])
        rest, test = _group_holdout(strata, groups, test_fraction, seed)
        relative_val = val_fraction / (1 - test_fraction)
        train_rel, val_rel = _group_holdout(strata[rest], groups[rest], relative_val, seed + 1)
        assignment[test] = "test"
        assignment[rest[val_rel]] = "val"
        assignment[rest[train_rel]] = "train"
    else:
        index = np.arange(n)
        rest, test = train_test_split(
            index, test_size=test_fraction, stratify=strata, random_state=seed
        )
        relative_val = val_fraction / (1 - test_fraction)
        rest_strata = strata[rest]
        values, counts = np.unique(rest_strata, return_counts=True)
        if (counts < 2).any():
            # A stratum left with one image after the test draw cannot be stratified
            # (scikit-learn raises); fall back to the class for the validation draw.
            labels = np.array([records[i].label for i in rest])
            rest_strata = np.where(np.isin(rest_strata, values[counts < 2]), labels, rest_strata)
            if (np.unique(rest_strata, return_counts=True)[1] < 2).any():
                rest_strata = None  # tiny data: an unstratified validation draw
        train, val = train_test_split(
            rest, test_size=relative_val, stratify=rest_strata, random_state=seed + 1
        )
        assignment[test], assignment[val], assignment[train] = "test", "val", "train"
    return [str(a) for a in assignment]


def patients_in_several_splits(records: Sequence[Record], splits: Sequence[str]) -> set[str]:
    """Patients whose images landed in more than one split (must be empty for patient level)."""
    seen: dict[str, set[str]] = {}
    for record, split in zip(records, splits, strict=True):
        seen.setdefault(record.patient, set()).add(split)
    return {patient for patient, names in seen.items() if len(names) > 1}


def read_splits_csv(path: Path) -> dict[str, str]:
    """A saved split (a model's ``splits.csv``): the split name by image key."""
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"key", "split"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path} needs the columns key and split.")
        return {row["key"]: row["split"] for row in reader}


def saved_split_names(records: Sequence[Record], split_of: dict[str, str]) -> list[str]:
    """Each record's split in a saved split (its key, or the key older split files gave
    it: ``Record.keys``); "" for a record the split does not name."""
    return [next((split_of[k] for k in r.keys if k in split_of), "") for r in records]

"""The two CT sets as samples, their splits, cached model-resolution arrays, augmentation.

``zenodo/`` (811 slices, lung + infection masks): split by ``volume_group``, never by
slice (neighbouring slices are nearly identical): the groups are shuffled with the seed
and taken for test, then validation, until each holds its share of the slices; the
rest train. ``medseg/`` (98 slices, ground-glass = 1 / consolidation = 2): its given
train/test split; a validation part is carved out of its train split **by slice** (the
set has no patient ids, so slices of one patient may sit on both sides of that line;
the test split is the one the copy came with, as Inf-Net used it).

No TensorFlow here: the arrays are NumPy, cached as ``.npz`` under ``var/cache/ct/``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ml.ct.preprocess import DEFAULT_PREPROCESSING, CTPreprocessing, Frame, prepare_slice

log = logging.getLogger(__name__)

ZENODO, MEDSEG = "zenodo", "medseg"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CTSample:
    """One slice: its image and masks, where it comes from and which split it is in."""

    key: str  # "zenodo/0000" or "medseg/slice-000"
    source: str  # ZENODO or MEDSEG
    image: Path
    group: str  # zenodo volume_group; "medseg" for MedSeg (no patient ids)
    split: str  # train / val / test
    lung_mask: Path | None = None  # zenodo only
    infection_mask: Path | None = None  # zenodo only
    type_mask: Path | None = None  # medseg only: 0 / 1 ggo / 2 consolidation


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is this the right data folder?")
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def split_groups(
    sizes: dict[str, int], seed: int, test_fraction: float = 0.2, val_fraction: float = 0.15
) -> dict[str, str]:
    """Group -> split: shuffled groups (seeded) fill test, then val, to their share of
    slices; at least one group each, the rest train. Needs three groups or more."""
    names = sorted(sizes)
    if len(names) < 3:
        raise ValueError(f"Need at least 3 volume groups for train/val/test, got {len(names)}.")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    total = sum(sizes.values())
    assignment: dict[str, str] = {}
    position = 0
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        taken = 0
        while position < len(order) - 1 and (taken == 0 or taken < fraction * total):
            assignment[order[position]] = split
            taken += sizes[order[position]]
            position += 1
    for name in order[position:]:
        assignment[name] = "train"
    if "train" not in assignment.values():
        raise ValueError("The volume groups left nothing to train on.")
    return assignment


def zenodo_samples(
    root: Path, seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.15
) -> list[CTSample]:
    """The zenodo slices with their split by volume group (see :func:`split_groups`)."""
    root = Path(root)
    rows = _read_csv(root / "slices.csv")
    sizes: dict[str, int] = {}
    for row in rows:
        sizes[row["volume_group"]] = sizes.get(row["volume_group"], 0) + 1
    groups = split_groups(sizes, seed, test_fraction, val_fraction)
    return [
        CTSample(
            key=f"{ZENODO}/{Path(row['image']).stem}",
            source=ZENODO,
            image=root / row["image"],
            group=row["volume_group"],
            split=groups[row["volume_group"]],
            lung_mask=root / row["lung_mask"],
            infection_mask=root / row["infection_mask"],
        )
        for row in rows
    ]


def medseg_samples(root: Path, seed: int = 0, val_fraction: float = 0.16) -> list[CTSample]:
    """The MedSeg slices: the given train/test split, with ``val_fraction`` of the train
    slices (at least one, seeded) moved to validation, by slice (no patient ids)."""
    root = Path(root)
    rows = _read_csv(root / "slices.csv")
    train_rows = [i for i, row in enumerate(rows) if row["split"] == "train"]
    if len(train_rows) < 2:
        raise ValueError("The MedSeg train split needs at least 2 slices (train + validation).")
    n_val = max(1, round(val_fraction * len(train_rows)))
    rng = np.random.default_rng(seed)
    val_rows = {train_rows[i] for i in rng.choice(len(train_rows), n_val, replace=False)}
    samples = []
    for i, row in enumerate(rows):
        split = "val" if i in val_rows else row["split"]
        if split not in SPLITS:
            raise ValueError(f"Unknown MedSeg split {row['split']!r} in {root / 'slices.csv'}.")
        samples.append(
            CTSample(
                key=f"{MEDSEG}/{Path(row['image']).stem}",
                source=MEDSEG,
                image=root / row["image"],
                group=MEDSEG,
                split=split,
                type_mask=root / row["mask"],
            )
        )
    return samples


def read_gray(path: Path) -> np.ndarray:
    """A slice image as a 2-D uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


@dataclass(frozen=True)
class References:
    """Reference masks of one slice at its original size (None: not labelled)."""

    lungs: np.ndarray | None
    infection: np.ndarray
    ggo: np.ndarray | None
    consolidation: np.ndarray | None


def references(sample: CTSample) -> References:
    if sample.source == ZENODO:
        if sample.lung_mask is None or sample.infection_mask is None:
            raise ValueError(f"{sample.key}: a zenodo slice needs lung and infection masks.")
        return References(
            lungs=_read_mask(sample.lung_mask) > 0,
            infection=_read_mask(sample.infection_mask) > 0,
            ggo=None,
            consolidation=None,
        )
    if sample.type_mask is None:
        raise ValueError(f"{sample.key}: a MedSeg slice needs its mask.")
    labels = _read_mask(sample.type_mask)
    unknown = set(np.unique(labels).tolist()) - {0, 1, 2}
    if unknown:
        raise ValueError(f"{sample.type_mask}: unexpected labels {sorted(unknown)}.")
    return References(lungs=None, infection=labels > 0, ggo=labels == 1, consolidation=labels == 2)


@dataclass
class CTArrays:
    """Model-resolution arrays of a list of samples (n, S, S)."""

    keys: list[str]
    x: np.ndarray  # float32 inputs
    lungs: np.ndarray  # uint8 0/1
    infection: np.ndarray  # uint8 0/1
    lesion_type: np.ndarray  # uint8 0 background / 1 ggo / 2 consolidation
    has_lungs: np.ndarray  # bool (n,): the lung mask is a label
    has_type: np.ndarray  # bool (n,): the lesion type is a label

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, index: np.ndarray | Sequence[int]) -> CTArrays:
        rows = np.asarray(index, dtype=int)
        return CTArrays(
            [self.keys[i] for i in rows],
            self.x[rows],
            self.lungs[rows],
            self.infection[rows],
            self.lesion_type[rows],
            self.has_lungs[rows],
            self.has_type[rows],
        )

    @staticmethod
    def concatenate(parts: Sequence[CTArrays]) -> CTArrays:
        return CTArrays(
            [k for p in parts for k in p.keys],
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.lungs for p in parts]),
            np.concatenate([p.infection for p in parts]),
            np.concatenate([p.lesion_type for p in parts]),
            np.concatenate([p.has_lungs for p in parts]),
            np.concatenate([p.has_type for p in parts]),
        )


def sample_arrays(
    sample: CTSample, spec: CTPreprocessing = DEFAULT_PREPROCESSING
) -> tuple[np.ndarray, Frame, References]:
    x, frame = prepare_slice(read_gray(sample.image), spec)
    return x, frame, references(sample)


def build_arrays(samples: Sequence[CTSample], spec: CTPreprocessing) -> CTArrays:
    n, size = len(samples), spec.size
    arrays = CTArrays(
        [s.key for s in samples],
        np.zeros((n, size, size), np.float32),
        np.zeros((n, size, size), np.uint8),
        np.zeros((n, size, size), np.uint8),
        np.zeros((n, size, size), np.uint8),
        np.zeros(n, bool),
        np.zeros(n, bool),
    )
    for i, sample in enumerate(samples):
        x, frame, ref = sample_arrays(sample, spec)
        arrays.x[i] = x
        arrays.infection[i] = frame.to_model(ref.infection.astype(np.uint8))
        if ref.lungs is not None:
            arrays.lungs[i] = frame.to_model(ref.lungs.astype(np.uint8))
            arrays.has_lungs[i] = True
        if ref.ggo is not None and ref.consolidation is not None:
            labels = ref.ggo.astype(np.uint8) + 2 * ref.consolidation.astype(np.uint8)
            arrays.lesion_type[i] = frame.to_model(labels)
            arrays.has_type[i] = True
    return arrays


def cached_arrays(
    samples: Sequence[CTSample], spec: CTPreprocessing, cache_dir: Path | None
) -> CTArrays:
    """:func:`build_arrays`, cached in ``cache_dir`` as one ``.npz`` per (files,
    preprocessing) pair; the key includes each file's size and modification time."""
    if cache_dir is None:
        return build_arrays(samples, spec)
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for s in samples:
        for path in (s.image, s.lung_mask, s.infection_mask, s.type_mask):
            if path is not None:
                stat = path.stat()
                digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    path = Path(cache_dir) / f"ct-{digest.hexdigest()[:20]}.npz"
    if path.exists():
        with np.load(path) as data:
            return CTArrays(
                [str(k) for k in data["keys"]],
                data["x"],
                data["lungs"],
                data["infection"],
                data["lesion_type"],
                data["has_lungs"],
                data["has_type"],
            )
    arrays = build_arrays(samples, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.npz")
    np.savez_compressed(
        partial,
        keys=np.asarray(arrays.keys),
        x=arrays.x,
        lungs=arrays.lungs,
        infection=arrays.infection,
        lesion_type=arrays.lesion_type,
        has_lungs=arrays.has_lungs,
        has_type=arrays.has_type,
    )
    partial.replace(path)
    log.info("ct: cached %d slices in %s", len(arrays), path)
    return arrays


def model_targets(arrays: CTArrays) -> dict[str, np.ndarray]:
    """Keras targets with the ``labelled`` channel last (see ml.ct.model)."""
    lung_label = np.broadcast_to(arrays.has_lungs[:, None, None], arrays.lungs.shape)
    type_label = np.broadcast_to(arrays.has_type[:, None, None], arrays.lungs.shape)
    lungs = np.stack([arrays.lungs, lung_label], axis=-1).astype(np.float32)
    infection = np.stack([arrays.infection, np.ones_like(arrays.infection)], -1).astype(np.float32)
    one_hot = np.eye(3, dtype=np.float32)[arrays.lesion_type]
    lesion_type = np.concatenate([one_hot, type_label[..., None].astype(np.float32)], axis=-1)
    return {"lungs": lungs, "infection": infection, "lesion_type": lesion_type}


# --- augmentation ---------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """Random changes made to each training slice (recorded on the card)."""

    dihedral: bool = True  # flips and 90-degree turns (MedSeg's orientation differs)
    scale: float = 0.1  # zoom by 1 +- scale
    shift: float = 0.06  # shift by +- shift x size
    rotate_degrees: float = 10.0
    gamma: float = 0.25  # gamma in [1 / (1 + g), 1 + g]
    contrast: float = 0.15  # contrast x (1 +- c), brightness +- c / 2
    noise: float = 0.02  # Gaussian noise sd, on a third of the slices


def augment(
    x: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    aug: Augmentation = Augmentation(),
) -> tuple[np.ndarray, np.ndarray]:
    """One random variant of a slice ``x`` (S, S) and its label maps ``labels`` (S, S, c)
    (uint8; nearest neighbour, so labels stay labels)."""
    size = x.shape[0]
    if aug.dihedral:
        k = int(rng.integers(4))
        x, labels = np.rot90(x, k), np.rot90(labels, k)
        if rng.random() < 0.5:
            x, labels = x[:, ::-1], labels[:, ::-1]
    scale = 1.0 + rng.uniform(-aug.scale, aug.scale)
    angle = rng.uniform(-aug.rotate_degrees, aug.rotate_degrees)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-aug.shift, aug.shift, 2) * size
    x = cv2.warpAffine(
        np.ascontiguousarray(x), matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0
    )
    warped = cv2.warpAffine(
        np.ascontiguousarray(labels), matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=0
    )
    labels = warped.reshape(labels.shape)
    gamma = float(np.exp(rng.uniform(-1, 1) * np.log1p(aug.gamma)))
    x = np.clip(x, 0.0, 1.0) ** gamma
    x = (x - 0.5) * (1.0 + rng.uniform(-aug.contrast, aug.contrast)) + 0.5
    x = x + rng.uniform(-aug.contrast, aug.contrast) / 2
    if rng.random() < 1 / 3:
        x = x + rng.normal(0.0, aug.noise, x.shape)
    return np.clip(x, 0.0, 1.0).astype(np.float32), labels


def augmented_batch(
    arrays: CTArrays, index: np.ndarray, rng: np.random.Generator, aug: Augmentation
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Inputs (n, S, S, 1) and targets of augmented copies of ``arrays[index]``."""
    part = arrays.subset(index)
    stacked = np.stack([part.lungs, part.infection, part.lesion_type], axis=-1)
    for i in range(len(part)):
        part.x[i], stacked[i] = augment(part.x[i], stacked[i], rng, aug)
    part.lungs, part.infection, part.lesion_type = (
        stacked[..., 0],
        stacked[..., 1],
        stacked[..., 2],
    )
    return part.x[..., np.newaxis], model_targets(part)

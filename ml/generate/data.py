"""The generator's data: the classifier's split and preprocessing, at the generator's size.

* **Split**: the patient-level split of the classifier the generator is measured with
  (``ml/bundled/cxr-lungs/splits.csv`` by default). The generator trains on its
  ``train`` part only; ``val`` chooses the checkpoint; ``test`` is reported once. A data
  folder exported by the platform (a ``split`` column) brings its own split instead.
* **Preprocessing**: exactly the classifier's (read from its card: v2, lung-frame crop,
  CLAHE, everything outside the dilated lung mask set to 0, at 160 px), through the
  same cached function training uses (:func:`ml.models.arrays.prepare_arrays`), then
  area-downsampled to the generator's size (64 px), the outside re-zeroed, and values
  under :data:`SNAP` set to 0 (the generator's background is never exactly 0; the
  same rule on real images keeps the two comparable).
* **Back to the classifier's frame**: :func:`to_classifier_frame` upsamples a 64 px
  image to 160 px (bilinear, outside kept at exactly 0, which is how ``lung_cnn`` finds
  the lungs). Real and generated images both take this round trip before the
  classifier's features are computed, so the resolution loss is the same for both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.data.labels import CLASSES
from ml.data.loaders import Dataset, Record, given_splits, load_many
from ml.data.preprocess import PreprocessSpec
from ml.data.splits import read_splits_csv, saved_split_names

log = logging.getLogger(__name__)

BUNDLED = Path(__file__).resolve().parent.parent / "bundled"
CLASSIFIER = BUNDLED / "cxr-lungs" / "cxr-lungs.keras"
SPLITS = BUNDLED / "cxr-lungs" / "splits.csv"
CACHE = Path("var/cache/gan")
GAN_SIZE = 64
SNAP = 0.02  # values below this are background (0)
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class SplitArrays:
    """One split at the generator's size, aligned by index."""

    x: np.ndarray  # float32 (n, S, S, 1) in [0, 1]; exactly 0 outside the lungs
    y: np.ndarray  # int32 class indices into CLASSES
    lungs: np.ndarray  # bool (n, S, S): the lung mask in the same frame
    sources: list[str]
    keys: list[str]
    patients: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def of_class(self, label: int) -> np.ndarray:
        chosen: np.ndarray = self.x[self.y == label]
        return chosen


@dataclass
class GanData:
    size: int
    spec: PreprocessSpec  # the classifier's preprocessing (its own input size)
    splits: dict[str, SplitArrays]
    content_hash: str
    split_source: str
    segmenter: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {c: int((part.y == i).sum()) for i, c in enumerate(CLASSES)}
            for name, part in self.splits.items()
        }


def classifier_spec(card: dict[str, Any]) -> PreprocessSpec:
    """The preprocessing of a classifier card; the generator needs a masked v2 one."""
    settings = {k: v for k, v in card["preprocessing"].items() if k != "segmenter"}
    spec = PreprocessSpec.from_dict(settings)
    if spec.version < 2 or not spec.mask_outside:
        raise ValueError(
            "The generator works on the classifier's lung-framed, masked inputs "
            "(preprocessing v2 with mask_outside); this classifier's card has "
            f"version {spec.version}, mask_outside={spec.mask_outside}."
        )
    return spec


def assign_splits(records: Sequence[Record], splits_csv: Path | None) -> tuple[list[str], str]:
    """train/val/test (or "unused") per record, and where the split came from."""
    given = given_splits(records)
    if given is not None:
        return given, "given with the data"
    if splits_csv is None:
        raise ValueError("These data carry no split: give --splits (the classifier's splits.csv).")
    names = saved_split_names(records, read_splits_csv(splits_csv))
    missing = sum(1 for n in names if not n)
    if missing:
        raise ValueError(
            f"{missing} of {len(records)} images are not in {splits_csv}: the generator "
            "trains on the classifier's split only (give the data it was trained on)."
        )
    return names, str(splits_csv)


def snap(x: np.ndarray) -> np.ndarray:
    """Background rule shared by real and generated images: values < SNAP become 0."""
    return np.where(x < SNAP, 0.0, x).astype(np.float32)


def downsample(
    x: np.ndarray, visible: np.ndarray, lungs: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n, S, S, 1) classifier inputs -> (n, size, size, 1), re-masked and snapped."""
    import cv2

    xs, ls = [], []
    for image, keep, lung in zip(x[..., 0], visible, lungs, strict=True):
        small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        # Masks: bilinear, then > 0.5.
        linear = cv2.INTER_LINEAR
        keep_small = cv2.resize(keep.astype(np.float32), (size, size), interpolation=linear) > 0.5
        xs.append(np.where(keep_small, small, 0.0))
        ls.append(cv2.resize(lung.astype(np.float32), (size, size), interpolation=linear) > 0.5)
    return snap(np.stack(xs)[..., np.newaxis]), np.stack(ls)


def to_classifier_frame(x: np.ndarray, size: int) -> np.ndarray:
    """(n, s, s, 1) generator-size images -> (n, size, size, 1) for the classifier:
    bilinear, with the background (exact zeros, upsampled nearest) kept at 0."""
    import cv2

    if x.shape[1] == size:
        return x.astype(np.float32)
    out = np.empty((len(x), size, size, 1), np.float32)
    for i, image in enumerate(x[..., 0]):
        up = cv2.resize(image.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        nearest = cv2.INTER_NEAREST
        keep = cv2.resize((image > 0).astype(np.uint8), (size, size), interpolation=nearest) > 0
        out[i, ..., 0] = np.where(keep, np.clip(up, 0.0, 1.0), 0.0)
    return out


def load_dataset(data: Sequence[Path], layout: str = "auto") -> Dataset:
    return load_many(data, layout)


def load_gan_data(
    data: Sequence[Path],
    *,
    classifier_card: dict[str, Any],
    splits_csv: Path | None = SPLITS,
    size: int = GAN_SIZE,
    cache: Path | None = CACHE,
    layout: str = "auto",
    progress: bool = True,
) -> GanData:
    """Every split of the data at the generator's size (see the module docstring)."""
    from ml.models.arrays import prepare_arrays
    from ml.models.training import load_segmenter

    if size % 16:
        raise ValueError(f"The generator's size must be a multiple of 16, got {size}.")
    dataset = load_dataset(data, layout)
    if not dataset.records:
        raise ValueError("No images in the data folders.")
    names, split_source = assign_splits(dataset.records, splits_csv)
    spec = classifier_spec(classifier_card)
    segmenter = load_segmenter(required=True)
    recorded = classifier_card["preprocessing"].get("segmenter") or {}
    if recorded.get("sha256") and recorded["sha256"] != segmenter.sha256:
        raise ValueError(
            "The bundled lung segmenter is not the one the classifier was trained with "
            f"({segmenter.sha256[:12]} vs {recorded['sha256'][:12]})."
        )
    arrays = prepare_arrays(
        dataset.records, spec, segmenter=segmenter, cache=cache, progress=progress
    )
    visible = arrays.visible if arrays.visible is not None else arrays.x[..., 0] > 0
    lungs = arrays.lungs if arrays.lungs is not None else visible
    x, lung_small = downsample(arrays.x, visible, lungs, size)
    y = np.array([CLASSES.index(r.label) for r in dataset.records], dtype=np.int32)
    splits = {}
    for name in SPLIT_NAMES:
        idx = [i for i, n in enumerate(names) if n == name]
        if not idx:
            raise ValueError(f"The {name} split is empty.")
        splits[name] = SplitArrays(
            x=x[idx],
            y=y[idx],
            lungs=lung_small[idx],
            sources=[dataset.records[i].source for i in idx],
            keys=[dataset.records[i].key for i in idx],
            patients=[dataset.records[i].patient for i in idx],
        )
    return GanData(
        size=size,
        spec=spec,
        splits=splits,
        content_hash=dataset.content_hash(),
        split_source=split_source,
        segmenter={"sha256": segmenter.sha256, "version": segmenter.version},
    )

"""Lung masks of the covid-chestxray set: pairs, patient split, cache, augmentation.

The masks (``annotations/lungVAE-masks/X_mask.png`` for image ``X.ext``) are lungVAE
model outputs (arXiv:2005.10052) at the image's original resolution, not expert
drawings. They exist for one source only, adult films mostly of COVID-19; children
(pediatric set) and NIH films have none. The augmentation is therefore strong and
geometric as well as photometric (zoom out so that lungs fill less of the frame as in
children's films, crops and odd aspect ratios that change the letterbox, rotation,
gamma, contrast, blur, noise), so that the model learns lung shape rather than the
look of one source.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ml.data.preprocess import open_image, to_unit_gray
from ml.lungs.masks import letterbox

log = logging.getLogger(__name__)

MASK_DIR = Path("annotations") / "lungVAE-masks"
# Upstream entered these Eurorad cases twice under two patient ids (datasets README).
DUPLICATE_PATIENTS = (("285", "339"), ("287", "340"))
CACHE_SIZE = 256  # letterboxed side kept in the cache; augmentation samples from it


@dataclass(frozen=True)
class MaskedImage:
    image: Path
    mask: Path
    patient: str  # "cc-<patientid>", duplicate patients merged
    split: str  # "train", "val" or "test"

    @property
    def key(self) -> str:
        return f"covid-chestxray/{self.image.name}"


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            item = self.parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _patients(root: Path) -> dict[str, str]:
    """filename -> patient key; ids sharing a file, and the documented pairs, are one."""
    union = _UnionFind()
    for a, b in DUPLICATE_PATIENTS:
        union.union(f"cc-{a}", f"cc-{b}")
    first: dict[str, str] = {}
    with (root / "metadata.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            filename = (row.get("filename") or "").strip()
            patient = f"cc-{(row.get('patientid') or '').strip()}"
            if filename in first:
                union.union(first[filename], patient)
            else:
                first[filename] = patient
    return {filename: union.find(patient) for filename, patient in first.items()}


def masked_images(
    covid_dir: str | Path,
    *,
    splits_csv: str | Path | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> list[MaskedImage]:
    """Every lungVAE mask whose image is in ``images/``, with a patient-level split.

    With ``splits_csv`` (the classifier's ``splits.csv``) an image takes the split of
    its key there, else the split of its patient there, else train: then the lung
    model never trained on the classifier's test patients, and its held-out numbers
    are on those same patients. Without it, patients are shuffled with ``seed`` and
    ``test_fraction`` / ``val_fraction`` of them held out.
    """
    root = Path(covid_dir)
    mask_dir = root / MASK_DIR
    if not (root / "metadata.csv").is_file() or not mask_dir.is_dir():
        raise FileNotFoundError(
            f"{root}: expected metadata.csv and {MASK_DIR}/ (the covid-chestxray layout)."
        )
    patient_of = _patients(root)
    pairs: list[tuple[Path, Path, str]] = []
    for mask in sorted(mask_dir.glob("*_mask.png")):
        stem = mask.name.removesuffix("_mask.png")
        images = sorted(p for p in (root / "images").glob(f"{stem}.*") if p.stem == stem)
        if images:
            patient = patient_of.get(images[0].name, f"cc-file-{images[0].name}")
            pairs.append((images[0], mask, patient))
    if not pairs:
        raise FileNotFoundError(f"No lungVAE mask in {mask_dir} has its image in images/.")
    if splits_csv is not None:
        by_key: dict[str, str] = {}
        by_patient: dict[str, str] = {}
        with Path(splits_csv).open(newline="") as fh:
            for row in csv.DictReader(fh):
                by_key[row["key"]] = row["split"]
                by_patient.setdefault(row["patient"], row["split"])
        split_of = {
            image.name: by_key.get(
                f"covid-chestxray/{image.name}", by_patient.get(patient, "train")
            )
            for image, _, patient in pairs
        }
    else:
        patients = sorted({patient for _, _, patient in pairs})
        order = np.random.default_rng(seed).permutation(len(patients))
        n_test = max(1, round(test_fraction * len(patients)))
        n_val = max(1, round(val_fraction * len(patients)))
        patient_split = {}
        for rank, index in enumerate(order):
            name = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            patient_split[patients[index]] = name
        split_of = {image.name: patient_split[patient] for image, _, patient in pairs}
    # A patient in two splits would leak; the classifier's split is patient-level, but
    # an image outside it (e.g. an excluded finding) may take "train" for a test patient.
    first_split: dict[str, str] = {}
    for image, _, patient in pairs:
        first_split.setdefault(patient, split_of[image.name])
        if first_split[patient] != split_of[image.name]:
            split_of[image.name] = first_split[patient] = "test"
    return [
        MaskedImage(image, mask, patient, split_of[image.name]) for image, mask, patient in pairs
    ]


def reference_mask(item: MaskedImage, shape: tuple[int, int]) -> np.ndarray:
    """The lungVAE mask as bool at ``shape`` (it is stored at the image's resolution;
    a few differ by a pixel or more, so resize nearest when they do)."""
    mask = Image.open(item.mask).convert("L")
    if mask.size != (shape[1], shape[0]):
        mask = mask.resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(mask) > 127


# --- cache -------------------------------------------------------------------------


@dataclass
class Arrays:
    """Letterboxed images and masks at ``CACHE_SIZE`` (uint8) and their content boxes."""

    images: np.ndarray  # (n, C, C) uint8
    masks: np.ndarray  # (n, C, C) uint8, 0/255
    boxes: np.ndarray  # (n, 4) int: top, left, bottom, right of the image in the canvas


def _load_one(
    item: MaskedImage, size: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    gray = to_unit_gray(open_image(item.image))
    canvas, box = letterbox(gray, size)
    reference = reference_mask(item, gray.shape).astype(np.float32)
    mask, _ = letterbox(reference, size)
    return (
        np.round(canvas * 255).astype(np.uint8),
        np.where(mask >= 0.5, 255, 0).astype(np.uint8),
        box.content_box(),
    )


def cached_arrays(items: list[MaskedImage], cache_dir: Path | None) -> Arrays:
    """Decode and letterbox every pair once; kept in ``cache_dir`` keyed by the files."""
    digest = hashlib.sha256(
        json.dumps(
            [
                [str(i.image), i.image.stat().st_size, str(i.mask), i.mask.stat().st_size]
                for i in items
            ]
            + [CACHE_SIZE, 1]
        ).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"lungs-{digest}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path) as data:
            return Arrays(data["images"], data["masks"], data["boxes"])
    loaded = [_load_one(item, CACHE_SIZE) for item in items]
    arrays = Arrays(
        np.stack([a for a, _, _ in loaded]),
        np.stack([m for _, m, _ in loaded]),
        np.array([b for _, _, b in loaded], dtype=np.int32),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp.npz")
        np.savez_compressed(partial, images=arrays.images, masks=arrays.masks, boxes=arrays.boxes)
        partial.replace(path)
    return arrays


def model_inputs(arrays: Arrays, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Unaugmented (n, size, size, 1) inputs in [0, 1] and bool masks (n, size, size)."""
    import cv2

    x = np.stack(
        [cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) for img in arrays.images]
    )
    y = np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA) for m in arrays.masks])
    return (x.astype(np.float32) / 255.0)[..., np.newaxis], y >= 128


# --- augmentation ------------------------------------------------------------------


def augment(
    image: np.ndarray,
    mask: np.ndarray,
    box: np.ndarray,
    size: int,
    rng: np.random.Generator,
    negatives: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One random variant of a cached pair: (size, size) float image in [0, 1], float mask.

    Geometry (same for image and mask): a random crop of the film (0-15 % per side, so
    part of a lung may be cut as in tightly collimated films), a random aspect ratio
    (0.8-1.25: changes the letterbox bars), re-letterboxing at ``size``, then rotation
    (+-12 deg), zoom (0.7-1.15: children's lungs fill less of the film) and shift
    (+-8 %), and a horizontal flip half of the time. Intensity: gamma (0.5-2), contrast
    and brightness, a blur or an unsharp mask, noise; the letterbox stays black.

    With probability ``negatives`` the variant is then made a film that is *not* a
    frontal chest X-ray the right way up (inverted, upside down, turned by 90 degrees)
    and its target is empty: the model learns to find no lungs there, which is what
    lets the segmenter say "lung fields not found" for such input.
    """
    import cv2

    top, left, bottom, right = (int(v) for v in box)
    img = image[top:bottom, left:right]
    msk = mask[top:bottom, left:right]
    height, width = img.shape
    if rng.random() < 0.6:
        cuts = rng.uniform(0.0, 0.15, size=4) * np.array([height, width, height, width])
        t, lft, b, r = (int(c) for c in cuts)
        if height - t - b > 16 and width - lft - r > 16:
            img, msk = img[t : height - b, lft : width - r], msk[t : height - b, lft : width - r]
    height, width = img.shape
    aspect = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    width = max(8, round(width * aspect))
    side = max(height, width)
    scale = size / side
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    canvas: np.ndarray = np.zeros((size, size), np.float32)
    canvas_mask: np.ndarray = np.zeros((size, size), np.float32)
    y0, x0 = (size - new_h) // 2, (size - new_w) // 2
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = (
        cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    )
    canvas_mask[y0 : y0 + new_h, x0 : x0 + new_w] = (
        cv2.resize(msk, (new_w, new_h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    )

    content: np.ndarray = np.zeros((size, size), np.float32)
    content[y0 : y0 + new_h, x0 : x0 + new_w] = 1.0

    angle = rng.uniform(-12, 12)
    zoom = float(np.exp(rng.uniform(np.log(0.7), np.log(1.15))))
    shift = rng.uniform(-0.08, 0.08, size=2) * size
    matrix = np.asarray(
        cv2.getRotationMatrix2D((size / 2, size / 2), angle, zoom), dtype=np.float64
    )
    matrix[:, 2] += shift
    canvas, canvas_mask, content = (
        cv2.warpAffine(
            a,
            matrix,
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        for a in (canvas, canvas_mask, content)
    )
    if rng.random() < 0.5:
        canvas, canvas_mask, content = canvas[:, ::-1], canvas_mask[:, ::-1], content[:, ::-1]

    canvas = np.clip(canvas, 0.0, 1.0) ** float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-0.12, 0.12)
    canvas = (canvas - 0.5) * contrast + 0.5 + brightness
    choice = rng.random()
    if choice < 0.3:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigmaX=rng.uniform(0.5, 1.5))
    elif choice < 0.45:
        blurred = cv2.GaussianBlur(canvas, (0, 0), sigmaX=2.0)
        canvas = canvas + rng.uniform(0.3, 1.0) * (canvas - blurred)
    if rng.random() < 0.5:
        canvas = canvas + rng.normal(0.0, rng.uniform(0.005, 0.04), canvas.shape)
    # The letterbox bars and the corners the rotation uncovered stay black, as in serving.
    canvas = np.clip(canvas * content, 0.0, 1.0).astype(np.float32)
    target = (canvas_mask >= 0.5).astype(np.float32)
    if negatives > 0 and rng.random() < negatives:
        canvas, target = _negative(canvas, rng), np.zeros_like(target)
    return canvas, target


def _negative(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(0, 4)
    if kind == 0:  # inverted (a MONOCHROME1 film shown as is), letterbox stays black
        return np.where(canvas > 0, 1.0 - canvas, 0.0).astype(np.float32)
    if kind == 1:  # upside down
        return np.ascontiguousarray(canvas[::-1, ::-1])
    return np.ascontiguousarray(np.rot90(canvas, 1 if kind == 2 else -1))

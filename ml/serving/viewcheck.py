"""View check: is this chest X-ray a frontal (PA/AP) view or a lateral one?

The classifier reads frontal views only. A lateral chest X-ray passes for a
chest radiograph (it is one), so the out-of-distribution gate
(:mod:`ml.serving.ood`) cannot be relied on to refuse it; this check can. Like
the gate it runs in the web process at upload, so serving is numpy only: a
linear score of a few hundred appearance features, fitted offline by
``python -m ml view fit`` with scikit-learn and stored as a small ``.npz`` plus
a JSON card (figures included) next to it.

Features (of the grayscale image in [0, 1], any size):

* a 24x24 contrast-normalised thumbnail: the layout (a frontal view has dark
  lungs either side of a bright mediastinum; a lateral view one dark field with
  the spine along one edge and the heart in front);
* left-right symmetry: the correlation of that thumbnail, and of its gradient
  magnitude, with their mirror images (frontal views are nearly symmetric);
* a gradient-orientation histogram (HOG-like, 4x4 cells x 9 unsigned
  orientations at 64 px): the spine and sternum of a lateral view are
  vertical edges where a frontal view has ribs running sideways;
* the log aspect ratio.

The model is an L2-regularised logistic regression, class-balanced, fitted on
frontal training views and *half* of the lateral views (split by patient) and
on their mirror images (patients face either way on a lateral film). The
threshold on its logit is chosen on frontal validation views only, so the
refusal rate of the held-out lateral views and the acceptance rate of the
frontal test views are honest estimates.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ml.serving.linear_check import LinearCheck, check_feature_count, read_check, write_check

if TYPE_CHECKING:
    from ml.serving.ood import OodGate

log = logging.getLogger(__name__)

VIEW_CHECK_VERSION = 1
THUMB = 24
HOG_SIZE = 64
HOG_CELLS = 4
HOG_BINS = 9
LATERAL_MESSAGE = "this looks like a lateral view; upload a frontal (PA/AP) chest X-ray."


def _resize(gray: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(np.asarray(gray, dtype=np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.float32)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 1e-9 else 0.0


def _orientation_histograms(mid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(HOG_CELLS^2 x HOG_BINS magnitude-weighted unsigned orientation histograms,
    gradient magnitude image) of a square image."""
    gy, gx = np.gradient(mid)
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((angle / np.pi * HOG_BINS).astype(np.int64), HOG_BINS - 1)
    cell = mid.shape[0] // HOG_CELLS
    rows = np.arange(mid.shape[0]) // cell
    cols = np.arange(mid.shape[1]) // cell
    cell_index = rows[:, None] * HOG_CELLS + cols[None, :]
    flat = (cell_index * HOG_BINS + bins).ravel()
    hist = np.bincount(flat, weights=magnitude.ravel(), minlength=HOG_CELLS**2 * HOG_BINS)
    total = float(np.sqrt((hist**2).sum()))
    return (hist / total if total > 1e-9 else hist).astype(np.float32), magnitude


def features(gray: np.ndarray) -> np.ndarray:
    """Frontal-vs-lateral features of a grayscale image in [0, 1] (H x W, any size)."""
    # NaN/inf (a broken decoder) count as black, so the features stay finite.
    gray = np.nan_to_num(np.asarray(gray, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    height, width = gray.shape
    thumb = np.clip(_resize(gray, THUMB), 0.0, 1.0)
    normalised = (thumb - thumb.mean()) / (float(thumb.std()) + 0.02)
    mid = np.clip(_resize(gray, HOG_SIZE), 0.0, 1.0)
    hog, magnitude = _orientation_histograms(mid)
    symmetry = [
        _correlation(normalised, normalised[:, ::-1]),
        _correlation(magnitude, magnitude[:, ::-1]),
    ]
    return np.concatenate(
        [normalised.ravel(), np.sqrt(hog), symmetry, [np.log(width / height)]]
    ).astype(np.float32)


@dataclass
class ViewCheck(LinearCheck):
    """A linear score (logit of "lateral") and its threshold; numpy only."""

    def score(self, gray: np.ndarray) -> float:
        return float(self.scores(features(gray)[np.newaxis])[0])

    def is_lateral(self, gray: np.ndarray) -> bool:
        # NaN (a degenerate image) is not called lateral: other checks handle it.
        return bool(self.score(gray) > self.threshold)

    def verdict(self, gray: np.ndarray, colourful: float = 0.0) -> str | None:
        """The word "lateral" for a lateral view, else None (``ml.serving.checks.InputCheck``)."""
        return "lateral" if self.is_lateral(gray) else None

    def save(self, path: Path) -> None:
        write_check(path, self.linear_arrays(), self.card)

    @classmethod
    def load(cls, path: Path) -> ViewCheck:
        _, _, fields = read_check(path)
        check = cls(**fields)
        expected = len(features(np.zeros((THUMB * 2, THUMB * 2), dtype=np.float32)))
        check_feature_count(check, path, expected, what="view check", refit="python -m ml view fit")
        return check


def fit_view_check(
    frontal_train: np.ndarray,
    lateral_fit: np.ndarray,
    frontal_val: np.ndarray,
    *,
    c: float = 0.05,
    val_quantile: float = 1.0,
    margin: float = 1.0,
) -> ViewCheck:
    """Fit the logistic regression; threshold = the ``val_quantile`` quantile of the
    frontal validation logits plus ``margin`` (default: one logit unit above the
    most lateral-looking validation frontal view)."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([frontal_train, lateral_fit])
    y = np.concatenate([np.zeros(len(frontal_train)), np.ones(len(lateral_fit))])
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-3
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    model.fit((x - mean) / scale, y)
    check = ViewCheck(
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        weights=model.coef_[0].astype(np.float32),
        bias=float(model.intercept_[0]),
        threshold=0.0,
    )
    val_scores = check.scores(frontal_val)
    check.threshold = float(np.quantile(val_scores, val_quantile) + margin)
    check.card = {
        "view_check_version": VIEW_CHECK_VERSION,
        "features": (
            f"{THUMB}x{THUMB} contrast-normalised box thumbnail, left-right symmetry of it and "
            f"of its gradient magnitude, {HOG_CELLS}x{HOG_CELLS} cells x {HOG_BINS} "
            f"orientations sqrt gradient histogram at {HOG_SIZE} px, log aspect ratio "
            f"({len(mean)} features)"
        ),
        "model": f"logistic regression (scikit-learn), L2, C={c}, class_weight=balanced, "
        "standardised features, fitted on the images and their mirror images",
        "score": "logit of 'lateral'; refused when above the threshold",
        "threshold": check.threshold,
        "threshold_rule": f"quantile {val_quantile} of frontal validation logits + {margin}",
        "val_frontal_score_max": float(val_scores.max()),
    }
    return check


# -- fitting and evaluation on the shared data ------------------------------------------


def image_features(image: Image.Image) -> np.ndarray:
    """Features of an opened image, as the web process sees it."""
    from ml.data.preprocess import to_unit_gray

    return features(to_unit_gray(image))


def _features_of_paths(
    paths: list[Path], *, mirrored: bool = False, progress: bool = False
) -> np.ndarray:
    """Features of each image (and, with ``mirrored``, of its mirror image after it)."""
    from ml.data.preprocess import open_image, to_unit_gray

    iterator: Iterable[Path] = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, unit="image", leave=False)
    rows = []
    for path in iterator:
        with open_image(path) as image:
            gray = to_unit_gray(image)
        rows.append(features(gray))
        if mirrored:
            rows.append(features(gray[:, ::-1]))
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class LateralView:
    path: Path
    patient: str
    license: str


def lateral_views(folder: Path) -> list[LateralView]:
    """The lateral views of a ``lateral-views`` folder (``labels.csv`` + ``images/``)."""
    folder = Path(folder)
    labels = folder / "labels.csv"
    if not labels.exists():
        raise FileNotFoundError(f"{labels} not found (expected the shared lateral-views folder).")
    with labels.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    views = [
        LateralView(folder / "images" / row["filename"], row["patient_id"], row["license"])
        for row in rows
    ]
    missing = [v.path.name for v in views if not v.path.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} lateral images missing, e.g. {missing[0]}")
    return views


def split_by_patient(
    views: list[LateralView], *, seed: int = 0
) -> tuple[list[LateralView], list[LateralView]]:
    """(fitting half, held-out half) of the lateral views; no patient in both."""
    patients = sorted({v.patient for v in views})
    order = np.random.default_rng(seed).permutation(len(patients))
    fitting = {patients[i] for i in order[: len(patients) // 2]}
    return (
        [v for v in views if v.patient in fitting],
        [v for v in views if v.patient not in fitting],
    )


def frontal_paths(data_dirs: list[Path], splits_csv: Path) -> dict[str, list[Path]]:
    """Image paths per split ("train", "val", "test") of a model's patient-level split.

    A split file names images ``<source>/<file name>``; an image is found under
    its loader's source name or, when the loader names the source differently
    from the split file (the NIH folders became one source, ``nih-cxr14``),
    under its data folder's name.
    """
    from ml.data.loaders import load_many

    with Path(splits_csv).open(newline="") as fh:
        split_of = {row["key"]: row["split"] for row in csv.DictReader(fh)}
    paths: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for folder in data_dirs:
        for record in load_many([folder]).records:
            split = split_of.get(record.key) or split_of.get(
                f"{Path(folder).name}/{record.path.name}"
            )
            if split in paths:
                paths[split].append(record.path)
    found = sum(len(p) for p in paths.values())
    if found < len(split_of):
        log.warning("%d of the %d images in %s not found", len(split_of) - found,
                    len(split_of), Path(splits_csv).name)  # fmt: skip
    return paths


def fit_from_shared_data(
    data_dirs: list[Path],
    splits_csv: Path,
    lateral_dir: Path,
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[ViewCheck, dict[str, list[Path]], list[LateralView], list[LateralView]]:
    """Fit on frontal train + the fitting half of the laterals, threshold on frontal val.

    Returns the check, the frontal paths per split and the (fitting, held-out)
    lateral views, for :func:`evaluate`.
    """
    frontal = frontal_paths(data_dirs, splits_csv)
    if not frontal["train"] or not frontal["val"]:
        raise ValueError(f"no frontal training/validation images of {splits_csv} in {data_dirs}")
    fitting, held_out = split_by_patient(lateral_views(lateral_dir), seed=seed)
    train = _features_of_paths(frontal["train"], mirrored=True, progress=progress)
    val = _features_of_paths(frontal["val"], progress=progress)
    lateral_fit = _features_of_paths([v.path for v in fitting], mirrored=True, progress=progress)
    check = fit_view_check(train, lateral_fit, val)
    check.card["fitted_on"] = {
        "frontal_train_images": len(frontal["train"]),
        "frontal_val_images_for_threshold": len(frontal["val"]),
        "splits_csv": Path(splits_csv).name,
        "data": [Path(d).name for d in data_dirs],
        "lateral_views_total": len(fitting) + len(held_out),
        "lateral_patients_total": len({v.patient for v in fitting + held_out}),
        "lateral_fit_images": len(fitting),
        "lateral_fit_patients": len({v.patient for v in fitting}),
        "lateral_held_out_images": len(held_out),
        "lateral_held_out_patients": len({v.patient for v in held_out}),
        "lateral_split": f"by patient, seed {seed} (ml.serving.viewcheck.split_by_patient)",
        "lateral_split_seed": seed,
        "lateral_held_out_files": sorted(v.path.name for v in held_out),
    }
    return check, frontal, fitting, held_out


def _verdicts(
    check: ViewCheck, paths: list[Path], gate: OodGate | None, progress: bool
) -> list[str]:
    """Per image: "accepted", "lateral" (refused by this check) or "ood" (by the gate,
    which runs first at upload)."""
    from ml.data.preprocess import open_image, to_unit_gray

    iterator: Iterable[Path] = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, unit="image", leave=False)
    out = []
    for path in iterator:
        with open_image(path) as image:
            gray = to_unit_gray(image)
            if gate is not None:
                from ml.serving.ood import colourful_fraction

                if gate.verdict(gray, colourful_fraction(image)) is not None:
                    out.append("ood")
                    continue
        out.append("lateral" if check.is_lateral(gray) else "accepted")
    return out


def evaluate(
    check: ViewCheck,
    frontal: dict[str, list[Path]],
    fitting: list[LateralView],
    held_out: list[LateralView],
    *,
    extra_frontal: list[Path] | None = None,
    gate: OodGate | None = None,
    progress: bool = False,
) -> dict[str, object]:
    """Frontal views accepted per split, lateral views refused, as ``[count, total]``.

    With the OOD ``gate`` the figures are as at upload (the gate runs first; an
    image it refuses never reaches this check): ``*_as_uploaded`` counts an image
    refused by either, and ``lateral_held_out_refused_as_lateral`` those refused
    with this check's message.
    """
    result: dict[str, object] = {}

    def count(verdicts: list[str], wanted: set[str]) -> list[int]:
        return [sum(v in wanted for v in verdicts), len(verdicts)]

    groups: dict[str, list[Path]] = {f"frontal_{k}": v for k, v in frontal.items()}
    if extra_frontal:
        from ml.data.loaders import load_many

        groups["frontal_unseen_sources"] = [r.path for r in load_many(extra_frontal).records]
        result["frontal_unseen_sources"] = [Path(d).name for d in extra_frontal]
    for name, paths in groups.items():
        alone = _verdicts(check, paths, None, progress)
        result[f"{name}_accepted"] = count(alone, {"accepted"})
        if gate is not None:
            result[f"{name}_accepted_as_uploaded"] = count(
                _verdicts(check, paths, gate, progress), {"accepted"}
            )
    for name, views in (("lateral_fit", fitting), ("lateral_held_out", held_out)):
        paths = [v.path for v in views]
        alone = _verdicts(check, paths, None, progress)
        result[f"{name}_refused"] = count(alone, {"lateral"})
        if name == "lateral_held_out":
            result["lateral_held_out_missed"] = [
                p.name for p, v in zip(paths, alone, strict=True) if v != "lateral"
            ]
        if gate is not None:
            uploaded = _verdicts(check, paths, gate, progress)
            result[f"{name}_refused_as_uploaded"] = count(uploaded, {"lateral", "ood"})
            result[f"{name}_refused_as_lateral"] = count(uploaded, {"lateral"})
    return result


def held_out_split(check: ViewCheck, lateral_dir: Path) -> tuple[list[LateralView], ...]:
    """The (fitting, held-out) lateral views a fitted check was built with (from its card)."""
    fitted_on = check.card.get("fitted_on", {})
    seed = fitted_on.get("lateral_split_seed")
    if seed is None:
        raise ValueError("the view check's card does not record its lateral split")
    fitting, held_out = split_by_patient(lateral_views(lateral_dir), seed=int(seed))
    recorded = fitted_on.get("lateral_held_out_files")
    if recorded is not None and sorted(v.path.name for v in held_out) != sorted(recorded):
        raise ValueError(
            f"{lateral_dir} does not split into the held-out views the check's card records; "
            "is it the same lateral-views folder?"
        )
    return fitting, held_out

"""Modality check: does this picture look like an axial chest CT slice or a chest X-ray?

The platform takes two kinds of study (docs/architecture.md, "CT"): chest X-rays,
which the classifier reads, and axial chest CT slices, which the CT segmenter reads.
Each model says something confident about any picture it is given, so an X-ray sent
as CT (or a CT slice sent as an X-ray) must be refused at upload, before anything is
stored. A DICOM file says its modality in its header; a PNG or JPEG does not, so the
clinician marks the upload and this check compares the mark with the pixels.

Like the out-of-distribution gate and the view check it runs at upload (in the
bounded decoder child), so serving is NumPy only: a linear score of a few hundred
appearance features, fitted offline by ``python -m ml ct-modality fit`` with
scikit-learn and stored as a small ``.npz`` plus a JSON card (figures included).

Features (of the grayscale image in [0, 1], any size):

* a 12x12 contrast-normalised thumbnail (layout: a CT slice is an ellipse of body on
  black air with two dark lungs inside; an X-ray fills its frame, with a bright
  mediastinum between the lung fields);
* a 16-bin intensity histogram and the share of near-black pixels;
* a radial profile: mean intensity and dark share in 8 elliptical rings from the
  centre out to the corners (air surrounds a CT slice on every side);
* the mean and dark share of the outer border and of the four corners;
* edges and texture: a 9-bin gradient-orientation histogram at 64 px and its entropy
  (an X-ray's ribs and mediastinum run in few directions, a slice's curves in all),
  the mean gradient magnitude, and the mean and 90th percentile of the Laplacian at
  128 px (the fine texture of lung parenchyma on CT);
* the log aspect ratio.

The model is an L2-regularised logistic regression, class-balanced, fitted on the
training parts of both CT sets, split as the CT segmentation model splits them
(``ml.ct.data``: zenodo by volume group; MedSeg's given ``train`` split less its
validation slices), and the X-ray training split (``ml/bundled/splits.csv``), each
image with its eight rotations and mirror images (the zenodo export and the MedSeg
copy are rotated compared with the radiological view; uploads may be too). Its score
is the logit of "CT"; the threshold is chosen on validation images only (zenodo
validation volume groups, MedSeg validation slices and the X-ray validation split),
so the held-out figures (``python -m ml ct-modality evaluate``) are honest estimates.

A linear CT-vs-X-ray score says nothing sensible about a photograph, so a second
part models what a CT slice looks like: the out-of-distribution gate's probabilistic
PCA (``ml.serving.ood``), fitted on the CT training slices and thresholded on the CT
validation slices. A picture is a CT slice when both agree
(:meth:`ModalityCheck.looks_like_ct_slice`). Marked CT, anything else is refused (as an X-ray
when the chest X-ray gate accepts it); marked X-ray, a CT slice is refused with its own
message and the rest is left to the X-ray gate and the view check.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ml.serving.linear_check import LinearCheck, check_feature_count, read_check, write_check

if TYPE_CHECKING:
    from ml.serving.ood import OodGate

log = logging.getLogger(__name__)

MODALITY_CHECK_VERSION = 1
THUMB = 12
BINS = 16
RINGS = 8
ORIENTATIONS = 9
DARK = 0.08  # "near black" (air, film background), of [0, 1]
BORDER = 0.08  # the outer border's width, a share of each side
CORNER = 0.15  # each corner square's side, a share of the shorter side

CT_LOOKS_LIKE_XRAY = (
    "this looks like a chest X-ray, not an axial CT slice; upload it as an X-ray "
    "(modality X-ray), or upload the CT slice itself."
)
# Added to the X-ray gate's refusal of a picture this check takes for a CT slice.
CT_HINT = (
    " It looks like an axial CT slice: to have CT slices segmented, upload them with the "
    "modality set to CT."
)
NOT_A_CT_SLICE = (
    "this does not look like an axial chest CT slice (nor a chest X-ray); upload the CT "
    "slice itself."
)
XRAY_LOOKS_LIKE_CT = (
    "this looks like an axial CT slice, not a chest X-ray; to have CT slices segmented, "
    "upload them with the modality set to CT."
)


def _resize(gray: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(np.asarray(gray, dtype=np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.float32)


def _radial_profile(gray: np.ndarray) -> np.ndarray:
    """Mean intensity and dark share in RINGS elliptical rings (centre to corners)."""
    small = _resize(gray, 64)
    coords = (np.arange(64, dtype=np.float32) + 0.5) / 32.0 - 1.0
    radius = np.hypot(coords[:, None], coords[None, :]) / math.sqrt(2.0)  # 1 at the corners
    ring = np.minimum((radius * RINGS).astype(np.int64), RINGS - 1).ravel()
    counts = np.bincount(ring, minlength=RINGS).astype(np.float32)
    means = np.bincount(ring, weights=small.ravel(), minlength=RINGS) / counts
    darks = np.bincount(ring, weights=(small.ravel() < DARK), minlength=RINGS) / counts
    return np.concatenate([means, darks]).astype(np.float32)


def _border_and_corners(gray: np.ndarray) -> np.ndarray:
    height, width = gray.shape
    by, bx = max(1, int(height * BORDER)), max(1, int(width * BORDER))
    border = np.concatenate(
        [gray[:by].ravel(), gray[-by:].ravel(), gray[:, :bx].ravel(), gray[:, -bx:].ravel()]
    )
    side = max(1, int(min(height, width) * CORNER))
    corners = np.concatenate(
        [
            gray[:side, :side].ravel(),
            gray[:side, -side:].ravel(),
            gray[-side:, :side].ravel(),
            gray[-side:, -side:].ravel(),
        ]
    )
    return np.array(
        [border.mean(), (border < DARK).mean(), corners.mean(), (corners < DARK).mean()],
        dtype=np.float32,
    )


def _edges_and_texture(gray: np.ndarray) -> np.ndarray:
    mid = np.clip(_resize(gray, 64), 0.0, 1.0)
    gy, gx = np.gradient(mid)
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((angle / np.pi * ORIENTATIONS).astype(np.int64), ORIENTATIONS - 1)
    histogram = np.bincount(bins.ravel(), weights=magnitude.ravel(), minlength=ORIENTATIONS)
    histogram = histogram / (histogram.sum() + 1e-9)
    entropy = float(-(histogram * np.log(histogram + 1e-9)).sum())
    fine = np.clip(_resize(gray, 128), 0.0, 1.0)
    laplacian = np.abs(
        4 * fine[1:-1, 1:-1] - fine[:-2, 1:-1] - fine[2:, 1:-1] - fine[1:-1, :-2] - fine[1:-1, 2:]
    )
    return np.concatenate(
        [
            np.sqrt(histogram),
            [entropy, float(laplacian.mean()), float(np.percentile(laplacian, 90))],
            [float(magnitude.mean())],
        ]
    ).astype(np.float32)


def features(gray: np.ndarray) -> np.ndarray:
    """CT-vs-X-ray features of a grayscale image in [0, 1] (H x W, any size)."""
    # NaN/inf (a broken decoder) count as black, so the features stay finite.
    gray = np.nan_to_num(np.asarray(gray, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    gray = np.clip(gray, 0.0, 1.0)
    height, width = gray.shape
    thumb = _resize(gray, THUMB)
    normalised = (thumb - thumb.mean()) / (float(thumb.std()) + 0.02)
    histogram = np.histogram(gray, bins=BINS, range=(0.0, 1.0))[0] / gray.size
    return np.concatenate(
        [
            normalised.ravel(),
            np.sqrt(histogram),
            [float((gray < DARK).mean()), float(gray.mean()), float(gray.std())],
            _radial_profile(gray),
            _border_and_corners(gray),
            _edges_and_texture(gray),
            [math.log(width / height)],
        ]
    ).astype(np.float32)


def dihedral(gray: np.ndarray) -> list[np.ndarray]:
    """The eight rotations and mirror images of an image."""
    views = []
    for k in range(4):
        rotated = np.rot90(gray, k)
        views += [rotated, rotated[:, ::-1]]
    return views


_GATE_ARRAYS = ("mean", "scale", "components", "variances")
_GATE_FLOATS = ("residual_variance", "threshold", "max_colourful", "min_spread")


@dataclass
class ModalityCheck(LinearCheck):
    """A linear score (logit of "CT") and its threshold, and a one-class model of CT
    slice appearance (``gate``: the out-of-distribution gate's PPCA, fitted on CT
    slices); NumPy only.

    A picture is *a CT slice* when the score is above the threshold **and** the gate
    accepts it: the linear score separates CT from X-rays but says nothing sensible
    about a photograph, which must not pass for either.
    """

    gate: OodGate | None = None

    def score(self, gray: np.ndarray) -> float:
        return float(self.scores(features(gray)[np.newaxis])[0])

    def looks_like_ct(self, gray: np.ndarray) -> bool:
        """The linear score alone: CT rather than X-ray (for images of either kind)."""
        return bool(self.score(gray) > self.threshold)

    def looks_like_ct_slice(self, gray: np.ndarray, colourful: float = 0.0) -> bool:
        """CT rather than X-ray, and like the CT slices the gate was fitted on."""
        if not self.looks_like_ct(gray):
            return False
        return self.gate is None or self.gate.verdict(gray, colourful) is None

    def problem(
        self,
        gray: np.ndarray,
        marked: str,
        colourful: float = 0.0,
        xray_gate: OodGate | None = None,
    ) -> str | None:
        """Why an upload marked ``marked`` ("xray" or "ct") is refused, or None.

        Marked CT: accepted when it is a CT slice; else it is refused as an X-ray when
        ``xray_gate`` (the chest X-ray gate) accepts it or, without that gate, when
        the linear score says X-ray; else as no CT slice at all. Marked X-ray:
        refused when it is a CT slice (the X-ray gate and view check judge the rest).
        """
        ct_slice = self.looks_like_ct_slice(gray, colourful)
        if marked == "xray":
            return XRAY_LOOKS_LIKE_CT if ct_slice else None
        if ct_slice:
            return None
        if xray_gate is not None:
            xray = xray_gate.verdict(gray, colourful) is None
        else:
            xray = not self.looks_like_ct(gray)
        return CT_LOOKS_LIKE_XRAY if xray else NOT_A_CT_SLICE

    def verdict(self, gray: np.ndarray, colourful: float = 0.0) -> str | None:
        """The word "ct slice" when an upload to be read as an X-ray is a CT slice, else
        None (``ml.serving.checks.InputCheck``; :meth:`problem` words either direction)."""
        return "ct slice" if self.problem(gray, "xray", colourful) else None

    def save(self, path: Path) -> None:
        arrays = self.linear_arrays()
        card = dict(self.card)
        if self.gate is not None:
            for name in _GATE_ARRAYS:
                arrays[f"gate_{name}"] = getattr(self.gate, name)
            for name in _GATE_FLOATS:
                arrays[f"gate_{name}"] = np.float64(getattr(self.gate, name))
            card["gate"] = self.gate.card
        write_check(path, arrays, card)

    @classmethod
    def load(cls, path: Path) -> ModalityCheck:
        from ml.serving.ood import OodGate

        arrays, card, fields = read_check(path)
        gate = None
        if "gate_mean" in arrays:
            gate = OodGate(
                mean=arrays["gate_mean"],
                scale=arrays["gate_scale"],
                components=arrays["gate_components"],
                variances=arrays["gate_variances"],
                residual_variance=float(arrays["gate_residual_variance"]),
                threshold=float(arrays["gate_threshold"]),
                max_colourful=float(arrays["gate_max_colourful"]),
                min_spread=float(arrays["gate_min_spread"]),
                card=card.get("gate", {}),
            )
        check = cls(**fields, gate=gate)
        expected = len(features(np.zeros((THUMB * 4, THUMB * 4), dtype=np.float32)))
        check_feature_count(
            check, path, expected, what="modality check", refit="python -m ml ct-modality fit"
        )
        return check


def fit_modality_check(
    ct_train: np.ndarray,
    xray_train: np.ndarray,
    ct_val: np.ndarray,
    xray_val: np.ndarray,
    *,
    c: float = 0.1,
) -> ModalityCheck:
    """Fit the logistic regression; the threshold is chosen on the validation logits
    (:func:`_threshold`): the midpoint of the margin when the classes separate there."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([ct_train, xray_train])
    y = np.concatenate([np.ones(len(ct_train)), np.zeros(len(xray_train))])
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-3
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    model.fit((x - mean) / scale, y)
    check = ModalityCheck(
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        weights=model.coef_[0].astype(np.float32),
        bias=float(model.intercept_[0]),
        threshold=0.0,
    )
    ct_scores, xray_scores = check.scores(ct_val), check.scores(xray_val)
    check.threshold, errors, gap = _threshold(ct_scores, xray_scores)
    rule = (
        "midpoint of the widest gap between sorted validation logits among the thresholds "
        f"with the fewest validation errors ({errors}; gap {gap:.3f})"
    )
    low, high = float(xray_scores.max()), float(ct_scores.min())
    check.card = {
        "modality_check_version": MODALITY_CHECK_VERSION,
        "features": (
            f"{THUMB}x{THUMB} contrast-normalised box thumbnail, {BINS}-bin sqrt intensity "
            f"histogram, dark share / mean / std, {RINGS}-ring elliptical radial profile "
            "(mean and dark share), border and corner mean and dark share, "
            f"{ORIENTATIONS}-bin gradient-orientation histogram and entropy, gradient and "
            "Laplacian texture, log aspect ratio "
            f"({len(mean)} features)"
        ),
        "model": f"logistic regression (scikit-learn), L2, C={c}, class_weight=balanced, "
        "standardised features, fitted on each image's 8 rotations and mirror images",
        "score": "logit of 'CT'; an upload marked CT is refused at or below the threshold, "
        "one marked X-ray above it",
        "threshold": check.threshold,
        "threshold_rule": rule,
        "val_xray_score_max": low,
        "val_ct_score_min": high,
    }
    return check


def _threshold(ct_scores: np.ndarray, xray_scores: np.ndarray) -> tuple[float, int, float]:
    """(threshold, validation errors, gap): of the midpoints between consecutive sorted
    validation logits, those that misclassify the fewest images, and of these the one
    in the widest gap (the margin's midpoint when the classes separate)."""
    values = np.sort(np.concatenate([ct_scores, xray_scores]))
    best: tuple[int, float, float] | None = None
    for a, b in itertools.pairwise(values):
        t = float(a + b) / 2.0
        errors = int((ct_scores <= t).sum() + (xray_scores > t).sum())
        key = (errors, -float(b - a), t)
        if best is None or key < best:
            best = key
    if best is None:
        raise ValueError("need validation images of both kinds to choose a threshold")
    errors, negative_gap, threshold = best
    return threshold, errors, -negative_gap


# -- the shared data ---------------------------------------------------------------------


@dataclass(frozen=True)
class CTSplits:
    """CT slice paths per split of both CT sets."""

    zenodo: dict[str, list[Path]]
    medseg: dict[str, list[Path]]
    zenodo_groups: dict[str, list[str]]


def ct_splits(ct_dir: Path) -> CTSplits:
    """Both CT sets of the shared ``ct-covid-seg`` folder, split as the CT segmentation
    model splits them (``ml.ct.data``: zenodo by volume group, MedSeg as given with a
    validation part of its training slices), so the check's held-out slices are the
    segmenter's too."""
    from ml.ct.data import medseg_samples, zenodo_samples

    ct_dir = Path(ct_dir)
    zenodo: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    groups: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for sample in zenodo_samples(ct_dir / "zenodo"):
        zenodo[sample.split].append(sample.image)
        groups[sample.split].add(sample.group)
    medseg: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for sample in medseg_samples(ct_dir / "medseg"):
        medseg[sample.split].append(sample.image)
    return CTSplits(
        zenodo=zenodo,
        medseg=medseg,
        zenodo_groups={name: sorted(members) for name, members in groups.items()},
    )


def gray_of_path(path: Path) -> np.ndarray:
    """An image file as the upload path sees it (EXIF orientation, any mode -> [0, 1])."""
    from ml.data.preprocess import open_image, to_unit_gray

    with open_image(path) as image:
        return to_unit_gray(image)


def features_of_paths(
    paths: Sequence[Path], *, augment: bool = False, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(this check's features, the appearance gate's features) of each image (with
    ``augment``, of its eight rotations and mirrors), from one decoding each."""
    from ml.serving.ood import features as gate_features

    iterator: Iterable[Path] = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, unit="image", leave=False)
    rows, gate_rows = [], []
    for path in iterator:
        gray = gray_of_path(path)
        for view in dihedral(gray) if augment else [gray]:
            rows.append(features(view))
            gate_rows.append(gate_features(np.ascontiguousarray(view)))
    empty = np.zeros((4 * THUMB, 4 * THUMB), dtype=np.float32)
    if not rows:
        return (
            np.zeros((0, len(features(empty))), np.float32),
            np.zeros((0, len(gate_features(empty))), np.float32),
        )
    return np.stack(rows), np.stack(gate_rows)


def xray_paths(data_dirs: Sequence[Path], splits_csv: Path) -> dict[str, list[Path]]:
    """The X-ray images of each split of a classifier's patient-level split file."""
    from ml.serving.viewcheck import frontal_paths

    return frontal_paths(list(data_dirs), splits_csv)


def fit_from_shared_data(
    ct_dir: Path,
    xray_dirs: Sequence[Path],
    splits_csv: Path,
    *,
    c: float = 0.1,
    progress: bool = False,
) -> tuple[ModalityCheck, CTSplits, dict[str, list[Path]]]:
    """Fit on the training parts, threshold on the validation parts (see the module
    docstring); returns the check and the splits, for :func:`evaluate`."""
    cts = ct_splits(ct_dir)
    xrays = xray_paths(xray_dirs, splits_csv)
    if not xrays["train"] or not xrays["val"]:
        raise ValueError(f"no X-ray training/validation images of {splits_csv} in {xray_dirs}")
    from ml.serving.ood import fit_gate

    ct_train, ct_train_gate = features_of_paths(
        cts.zenodo["train"] + cts.medseg["train"], augment=True, progress=progress
    )
    xray_train, _ = features_of_paths(xrays["train"], augment=True, progress=progress)
    ct_val, ct_val_gate = features_of_paths(
        cts.zenodo["val"] + cts.medseg["val"], progress=progress
    )
    xray_val, _ = features_of_paths(xrays["val"], progress=progress)
    check = fit_modality_check(ct_train, xray_train, ct_val, xray_val, c=c)
    # CT slice appearance: the X-ray gate's model, fitted on CT training slices (and
    # their rotations) and thresholded on CT validation slices, as the X-ray gate is on
    # X-rays; grayscale slices, so the colour limit is its floor (1% of pixels).
    check.gate = fit_gate(
        ct_train_gate,
        ct_val_gate,
        np.zeros(len(ct_train_gate)),
        np.zeros(len(ct_val_gate)),
    )
    check.gate.card["fitted_on_what"] = (
        "CT training slices of both sets (8 rotations and mirrors each); threshold on the "
        "CT validation slices"
    )
    check.gate.card["threshold_rule"] = "1.25 x quantile 1.0 of validation CT slice scores"
    check.card["fitted_on"] = {
        "ct_train_images": len(cts.zenodo["train"]) + len(cts.medseg["train"]),
        "zenodo_train_slices": len(cts.zenodo["train"]),
        "medseg_train_slices": len(cts.medseg["train"]),
        "zenodo_volume_groups": cts.zenodo_groups,
        "xray_train_images": len(xrays["train"]),
        "augmentation": "8 rotations and mirror images of every training image",
        "threshold_on": {
            "zenodo_val_slices": len(cts.zenodo["val"]),
            "medseg_val_slices": len(cts.medseg["val"]),
            "xray_val_images": len(xrays["val"]),
        },
        "splits_csv": Path(splits_csv).name,
        "xray_data": [Path(d).name for d in xray_dirs],
    }
    return check, cts, xrays


def wilson_interval(successes: int, total: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (statsmodels); (0, 1) for no trials."""
    if total == 0:
        return 0.0, 1.0
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, total, alpha=0.05, method="wilson")
    return float(low), float(high)


def _ct_slice_flags(
    check: ModalityCheck, items: Iterable[tuple[str, Image.Image]]
) -> list[tuple[str, bool]]:
    """(name, is a CT slice) of each image, as the upload path sees it (colour included)."""
    from ml.data.preprocess import to_unit_gray
    from ml.serving.ood import colourful_fraction

    return [
        (name, check.looks_like_ct_slice(to_unit_gray(image), colourful_fraction(image)))
        for name, image in items
    ]


def _opened(paths: Sequence[Path], progress: bool) -> Iterable[tuple[str, Image.Image]]:
    from ml.data.preprocess import open_image

    iterator: Iterable[Path] = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, unit="image", leave=False)
    for path in iterator:
        with open_image(path) as image:
            yield path.name, image


def _count(flags: list[tuple[str, bool]], *, want_ct: bool) -> dict[str, Any]:
    accepted = sum(ct == want_ct for _, ct in flags)
    low, high = wilson_interval(accepted, len(flags))
    return {
        "accepted": accepted,
        "refused": len(flags) - accepted,
        "total": len(flags),
        "accepted_rate": round(accepted / len(flags), 4) if flags else None,
        "accepted_rate_95ci": [round(low, 4), round(high, 4)],
        "refused_files": sorted(name for name, ct in flags if ct != want_ct)[:20],
    }


def _xray_folder(folder: Path) -> list[Path]:
    """The images of an X-ray folder never used to fit: a data set the loaders read
    (adult-pneumonia), else every PNG/JPEG under it (the lateral views)."""
    from ml.data.loaders import load_many

    try:
        paths = [r.path for r in load_many([folder]).records]
    except (ValueError, FileNotFoundError, KeyError):
        paths = []
    if paths:
        return paths
    suffixes = {".png", ".jpg", ".jpeg"}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)


def evaluate(
    check: ModalityCheck,
    cts: CTSplits,
    xrays: dict[str, list[Path]],
    *,
    extra_xray: Sequence[Path] = (),
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per group of images, how many this check passes under the right mark (CT slices
    marked CT, X-rays marked X-ray), with Wilson 95 % intervals. The same counts read
    the other way are the refusals of wrongly marked uploads: a CT slice marked X-ray is
    refused exactly when a CT upload of it would be accepted. ``non_chest_packaged``:
    photographs, drawings and other modalities' images from installed packages, which
    an upload marked CT must refuse (``accepted`` counts those it does not take for
    CT slices)."""
    result: dict[str, dict[str, Any]] = {}
    groups: list[tuple[str, list[Path], bool]] = [
        ("ct_zenodo_train", cts.zenodo["train"], True),
        ("ct_medseg_train", cts.medseg["train"], True),
        ("ct_zenodo_val", cts.zenodo["val"], True),
        ("ct_medseg_val", cts.medseg["val"], True),
        ("ct_zenodo_test", cts.zenodo["test"], True),
        ("ct_medseg_test", cts.medseg["test"], True),
        ("xray_train", xrays["train"], False),
        ("xray_val", xrays["val"], False),
        ("xray_test", xrays["test"], False),
    ]
    for folder in extra_xray:
        groups.append((f"xray_unseen_{Path(folder).name}", _xray_folder(Path(folder)), False))
    for name, paths, want_ct in groups:
        result[name] = _count(_ct_slice_flags(check, _opened(paths, progress)), want_ct=want_ct)
    from ml.serving.ood import packaged_non_chest_images

    packaged = packaged_non_chest_images()
    # pydicom's CT samples are CT (shown through their own header window here), so they
    # are reported apart, without a target: the rest must not pass for CT slices.
    result["non_chest_packaged"] = _count(
        _ct_slice_flags(check, [(n, i) for n, i in packaged if "(CT)" not in n]), want_ct=False
    )
    result["packaged_ct_samples"] = _count(
        _ct_slice_flags(check, [(n, i) for n, i in packaged if "(CT)" in n]), want_ct=True
    )
    return result


def held_out_summary(result: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The held-out figures the docs quote: CT test slices of both sets accepted as CT
    (so refused when marked X-ray), X-ray test images accepted as X-ray (refused as CT)."""
    summary = {}
    for name, keys, want in (
        ("ct_held_out", ["ct_zenodo_test", "ct_medseg_test"], "CT"),
        ("xray_test", ["xray_test"], "X-ray"),
    ):
        accepted = sum(result[k]["accepted"] for k in keys if k in result)
        total = sum(result[k]["total"] for k in keys if k in result)
        low, high = wilson_interval(accepted, total)
        summary[name] = {
            "accepted_as": want,
            "accepted": accepted,
            "total": total,
            "accepted_rate_95ci": [round(low, 4), round(high, 4)],
        }
    return summary


# -- CLI (python -m ml ct-modality fit | evaluate) ---------------------------------------


def _print(result: dict[str, dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for name, row in result.items():
        if "accepted" not in row:
            continue
        low, high = row["accepted_rate_95ci"]
        files = f" ({', '.join(row['refused_files'][:5])})" if row["refused_files"] else ""
        if name == "non_chest_packaged":
            print(
                f"non-chest images: not taken for CT slices {row['accepted']}/{row['total']} "
                f"(95% CI {100 * low:.1f}-{100 * high:.1f}%), so refused when marked CT; "
                f"taken for CT slices: {row['refused']}{files}"
            )
            continue
        right = "CT" if name.startswith(("ct", "packaged_ct")) else "X-ray"
        wrong = "X-ray" if right == "CT" else "CT"
        print(
            f"{name.replace('_', ' ')}: accepted as {right} {row['accepted']}/{row['total']} "
            f"(95% CI {100 * low:.1f}-{100 * high:.1f}%), so refused when marked {wrong}; "
            f"refused as {right}: {row['refused']}{files}"
        )


def cmd_fit(args: argparse.Namespace) -> int:
    check, cts, xrays = fit_from_shared_data(
        args.ct, args.data, args.splits, c=args.c, progress=not args.quiet
    )
    result = evaluate(check, cts, xrays, extra_xray=args.extra_xray, progress=not args.quiet)
    check.card["measured"] = result
    check.card["held_out"] = held_out_summary(result)
    check.save(args.out)
    print(f"modality check: {args.out} (threshold {check.threshold:.3f})")
    _print(result, as_json=False)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    check = ModalityCheck.load(args.check)
    cts = ct_splits(args.ct)
    recorded = check.card.get("fitted_on", {}).get("zenodo_volume_groups")
    if recorded is not None and recorded != cts.zenodo_groups:
        raise ValueError(
            "the zenodo volume groups split differently from the ones the check was fitted "
            f"with ({recorded}); refit with python -m ml ct-modality fit."
        )
    result = evaluate(
        check,
        cts,
        xray_paths(args.data, args.splits),
        extra_xray=args.extra_xray,
        progress=not args.quiet,
    )
    result["held_out"] = held_out_summary(result)
    _print(result, as_json=args.json)
    return 0


def add_modality_parser(sub: Any, bundled: Path) -> None:
    """``ct-modality fit`` and ``ct-modality evaluate`` on the ``python -m ml`` parser."""
    task = sub.add_parser("ct-modality", help="CT-vs-X-ray modality check: fit, evaluate")
    verbs = task.add_subparsers(dest="ct_modality_command", required=True)
    for name, func, text in (
        ("fit", cmd_fit, "fit the CT-vs-X-ray modality check (upload refusal)"),
        ("evaluate", cmd_eval, "CT slices and X-rays accepted under the right mark"),
    ):
        p = verbs.add_parser(name, help=text)
        p.add_argument("--ct", type=Path, required=True, help="the ct-covid-seg folder")
        p.add_argument("--data", nargs="+", type=Path, required=True, help="X-ray data folders")
        p.add_argument("--splits", type=Path, default=bundled / "splits.csv")
        p.add_argument(
            "--extra-xray",
            dest="extra_xray",
            nargs="*",
            type=Path,
            default=[],
            help="X-ray folders never used to fit, measured as well (e.g. adult-pneumonia)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "fit":
            p.add_argument("--out", type=Path, default=bundled / "ct-modality.npz")
            p.add_argument("--c", type=float, default=0.1, help="inverse L2 strength")
        else:
            p.add_argument("--check", type=Path, default=bundled / "ct-modality.npz")
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)

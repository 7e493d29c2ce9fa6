"""Drift: how far a site's recent images and results have moved from the model's reference.

Why this module exists: a model that was fine at go-live can quietly degrade when a site
changes its X-ray equipment, processing or patient mix. Nobody labels every film, so the
first signal is the inputs and outputs themselves: each prediction records a few
features (:data:`FEATURES`: the out-of-distribution score, the lung-field area, the
intensity inside the lungs, the confidence and the predicted class) and each is compared
with the same feature on the model's reference images (its test split).

Two standard two-sample figures per feature: the **population stability index** (PSI,
reference deciles as bins; a categorical feature uses its categories) and the
**Kolmogorov-Smirnov** statistic with its p-value (scipy, numerical features only). The
usual reading of the PSI: below 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a
shift to act on (:data:`PSI_DRIFT`). A feature with fewer than :data:`MIN_IMAGES` recent
values is not judged. No Django, no TensorFlow; scipy only when figures are compared, so
the inference worker can read the names here (:data:`FEATURES`, :data:`REFERENCE_NAME`)
without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# The reference file a model carries beside its artifact (``python -m ml classifier
# drift-reference`` writes it; registering the model stores it with it).
REFERENCE_NAME = "drift-reference.json"

# Numerical features; "predicted_class" is categorical.
NUMERICAL = ("ood_score", "lung_area", "lung_mean", "lung_std", "confidence")
CATEGORICAL = ("predicted_class",)
FEATURES = (*NUMERICAL, *CATEGORICAL)
FEATURE_NAMES = {
    "ood_score": "Out-of-distribution score",
    "lung_area": "Lung-field area (share of the image)",
    "lung_mean": "Mean intensity inside the lungs",
    "lung_std": "Intensity spread inside the lungs",
    "confidence": "Model confidence",
    "predicted_class": "Predicted-class shares",
}
PSI_DRIFT = 0.25
PSI_MODERATE = 0.10
MIN_IMAGES = 20
_BINS = 10
_EPS = 1e-4  # an empty bin's share, so that the logarithm stays finite


def image_features(gray: np.ndarray, mask: np.ndarray | None) -> dict[str, float | None]:
    """The input features of one image (``gray`` in [0, 1], ``mask`` its lung mask of the
    same shape, True/nonzero = lung): lung area share, and the mean and spread of the
    intensity inside the lungs (None without a mask or with an empty one)."""
    gray = np.asarray(gray, dtype=np.float64)
    if mask is None:
        return {"lung_area": None, "lung_mean": None, "lung_std": None}
    lung = np.asarray(mask) > 0
    if lung.shape != gray.shape:
        raise ValueError(f"mask {lung.shape} and image {gray.shape} differ in shape")
    if not lung.any():
        return {"lung_area": 0.0, "lung_mean": None, "lung_std": None}
    inside = gray[lung]
    return {
        "lung_area": round(float(lung.mean()), 5),
        "lung_mean": round(float(inside.mean()), 5),
        "lung_std": round(float(inside.std()), 5),
    }


def prediction_features(
    gray: np.ndarray,
    mask: np.ndarray | None,
    probabilities: Mapping[str, float],
    ood_score: float | None,
) -> dict[str, Any]:
    """Every feature of :data:`FEATURES` for one classified image: its input features
    (:func:`image_features`), the gate's score, the top probability and its class."""
    label = max(probabilities, key=lambda name: probabilities[name]) if probabilities else None
    return {
        "ood_score": None if ood_score is None else round(float(ood_score), 4),
        **image_features(gray, mask),
        "confidence": None if label is None else round(float(probabilities[label]), 5),
        "predicted_class": label,
    }


def psi(reference: Sequence[float], recent: Sequence[float], bins: int = _BINS) -> float:
    """Population stability index of numerical ``recent`` against ``reference``, on the
    reference's quantile bins (open-ended at both ends)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(recent, dtype=np.float64)
    if len(ref) == 0 or len(cur) == 0:
        raise ValueError("both samples need values")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    cur_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    return _psi_of_shares(ref_share / len(ref), cur_share / len(cur))


def psi_categorical(reference: Sequence[str], recent: Sequence[str]) -> float:
    """Population stability index of categorical values (the categories are the bins)."""
    if len(reference) == 0 or len(recent) == 0:
        raise ValueError("both samples need values")
    categories = sorted({*map(str, reference), *map(str, recent)})
    ref = np.asarray([list(map(str, reference)).count(c) for c in categories], dtype=np.float64)
    cur = np.asarray([list(map(str, recent)).count(c) for c in categories], dtype=np.float64)
    return _psi_of_shares(ref / ref.sum(), cur / cur.sum())


def _psi_of_shares(ref: np.ndarray, cur: np.ndarray) -> float:
    ref = np.clip(ref, _EPS, None)
    cur = np.clip(cur, _EPS, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    n_reference: int
    n_recent: int
    psi: float | None  # None: too few values to judge
    ks: float | None  # numerical features only
    p_value: float | None

    @property
    def level(self) -> str:
        """ "drift", "moderate", "none" or "too few" (recent values below MIN_IMAGES)."""
        if self.psi is None:
            return "too few"
        if self.psi > PSI_DRIFT:
            return "drift"
        return "moderate" if self.psi > PSI_MODERATE else "none"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "level": self.level}


def compare(
    reference: Mapping[str, Sequence[Any]],
    recent: Mapping[str, Sequence[Any]],
    *,
    min_images: int = MIN_IMAGES,
) -> dict[str, FeatureDrift]:
    """Each feature of :data:`FEATURES` present in ``reference``: its PSI (and KS for
    numerical ones) between the reference values and the recent ones. None values are
    left out; a feature with fewer than ``min_images`` recent values gets no figures."""
    from scipy.stats import ks_2samp

    out: dict[str, FeatureDrift] = {}
    for feature in FEATURES:
        if feature not in reference:
            continue
        ref = [v for v in reference[feature] if v is not None]
        cur = [v for v in recent.get(feature, []) if v is not None]
        if len(cur) < min_images or not ref:
            out[feature] = FeatureDrift(feature, len(ref), len(cur), None, None, None)
        elif feature in CATEGORICAL:
            out[feature] = FeatureDrift(
                feature, len(ref), len(cur), round(psi_categorical(ref, cur), 4), None, None
            )
        else:
            test = ks_2samp(np.asarray(ref, dtype=float), np.asarray(cur, dtype=float))
            out[feature] = FeatureDrift(
                feature,
                len(ref),
                len(cur),
                round(psi(ref, cur), 4),
                round(float(test.statistic), 4),
                float(test.pvalue),
            )
    return out


def reference_sample(
    values: Mapping[str, Sequence[Any]], size: int = 500, seed: int = 0
) -> dict[str, list[Any]]:
    """At most ``size`` values of each feature, drawn without replacement (what a model's
    reference keeps: enough for the deciles and the KS test, small enough for a card)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Any]] = {}
    for feature, column in values.items():
        kept = [v for v in column if v is not None]
        if len(kept) > size:
            kept = [kept[i] for i in sorted(rng.choice(len(kept), size, replace=False))]
        out[feature] = kept
    return out

"""A local validation study: what a model reaches on one site's labelled images.

Why this module exists: a model's test split says little about the next hospital (the
bundled classifier calls far fewer of an unseen site's normals normal than its test
split suggests). Before a site relies on the model, its model admins measure it on that
site's own images with confirmed labels, and after go-live they can move the site's
operating point to reach a target there. Both are computed here, from the labels and the
model's probabilities alone (no Django, no TensorFlow).

Every figure carries a 95 % interval and the number of images it is measured on: for
the shares (sensitivity, specificity, PPV, NPV, normals called normal, accuracy,
recall) the Wilson score interval (:func:`wilson_interval`: unlike the bootstrap it does
not collapse to a point when every image of a few is called right); for the AUROCs and
the calibration error a percentile bootstrap (images resampled with replacement,
``np.random.default_rng(seed)``, so the same input gives the same result). A figure
whose interval is wider than ``max_width`` is flagged as too wide to decide, with about
how many more images of the kind it is measured on would narrow it to ``max_width``: a
binomial interval narrows as one over the square root of the count, so
``n * (width / max_width) ** 2`` in all.

The label of an image is ``argmax(log p + offsets)``: ``probs`` are the served model's
probabilities (already at the model's own operating point), ``offsets`` a site's
operating point on top (none: the model's own labels).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from ml.models.evaluation import ECE_BINS, expected_calibration_error, percentile_intervals

COVID = "covid19"
NORMAL = "normal"
# The widest 95 % interval a figure may have and still be read as decided.
MAX_WIDTH = 0.20
# The targets a site operating point can be chosen for, and what each measures.
TARGETS: dict[str, str] = {
    "covid19_sensitivity": "COVID-19 images called COVID-19",
    "covid19_specificity": "images without COVID-19 not called COVID-19",
    "normal_called_normal": "normal images called normal",
}
# The offsets a site operating point is searched over (added to the log-probabilities
# of every class but the first).
SITE_GRID: tuple[float, ...] = tuple(float(v) for v in np.arange(-2.0, 2.0001, 0.25))


@dataclass(frozen=True)
class Estimate:
    """One figure: its value, 95 % interval, the count it is measured on and what that
    count is (``of``: e.g. "COVID-19 images"). ``value`` is None when the count is 0."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    of: str
    too_wide: bool = False
    more_needed: int = 0  # about how many more images of ``of`` would decide it

    @property
    def width(self) -> float | None:
        return None if self.low is None or self.high is None else self.high - self.low


@dataclass(frozen=True)
class LocalValidation:
    """The figures of one model on one set of labelled images."""

    n: int
    classes: list[str]
    counts: dict[str, int]
    figures: dict[str, Estimate]  # name -> estimate, in display order
    recall: dict[str, Estimate]  # per class
    reliability: list[dict[str, float]] = field(default_factory=list)
    offsets: dict[str, float] = field(default_factory=dict)
    n_bootstrap: int = 0

    @property
    def warnings(self) -> list[str]:
        """Plain sentences for every figure too uncertain to decide on."""
        out = []
        for name, estimate in [
            *self.figures.items(),
            *(("recall " + k, v) for k, v in self.recall.items()),
        ]:
            if estimate.n == 0:
                out.append(f"{FIGURE_NAMES.get(name, name)}: no {estimate.of} yet, so no figure.")
            elif estimate.too_wide:
                out.append(
                    f"{FIGURE_NAMES.get(name, name)}: the interval is "
                    f"{estimate.low:.2f}-{estimate.high:.2f}, too wide to decide on "
                    f"{estimate.n} {estimate.of}; about {estimate.more_needed} more would "
                    f"narrow it to {MAX_WIDTH:.2f}."
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "classes": self.classes,
            "counts": self.counts,
            "figures": {k: asdict(v) for k, v in self.figures.items()},
            "recall": {k: asdict(v) for k, v in self.recall.items()},
            "reliability": self.reliability,
            "offsets": self.offsets,
            "n_bootstrap": self.n_bootstrap,
            "warnings": self.warnings,
        }


FIGURE_NAMES = {
    "covid19_sensitivity": "COVID-19 sensitivity",
    "covid19_specificity": "COVID-19 specificity",
    "covid19_ppv": "COVID-19 PPV",
    "covid19_npv": "COVID-19 NPV",
    "normal_called_normal": "Normals called normal",
    "accuracy": "Accuracy",
    "covid19_auroc": "COVID-19 AUROC (vs the rest)",
    "covid19_vs_normal_auroc": "COVID-19 vs normal AUROC",
    "ece": "Calibration error (ECE)",
}


def labels_at(
    probs: np.ndarray, classes: Sequence[str], offsets: Mapping[str, float] | None
) -> np.ndarray:
    """Class indices at ``offsets`` (none: the argmax of ``probs``)."""
    scores = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1.0))
    if offsets:
        scores = scores + np.asarray([float(offsets.get(c, 0.0)) for c in classes])
    return np.asarray(scores.argmax(axis=1))


def _validated(
    y_true: Sequence[str], probs: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    class_list = list(classes)
    if COVID not in class_list or NORMAL not in class_list:
        raise ValueError(f"classes must include {COVID!r} and {NORMAL!r}, got {class_list}")
    unknown = sorted({str(y) for y in y_true} - set(class_list))
    if unknown:
        raise ValueError(f"labels outside the model's classes: {unknown}")
    prob_array = np.asarray(probs, dtype=np.float64)
    if prob_array.ndim != 2 or prob_array.shape != (len(y_true), len(class_list)):
        raise ValueError(
            f"probs must be ({len(y_true)}, {len(class_list)}), got {prob_array.shape}"
        )
    return np.asarray([class_list.index(str(y)) for y in y_true], dtype=np.int64), prob_array


def _shares(
    y: np.ndarray, pred: np.ndarray, covid: int, normal: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each share as (numerator hits, denominator mask) per image, for the bootstrap."""
    return {
        "covid19_sensitivity": (pred == covid, y == covid),
        "covid19_specificity": (pred != covid, y != covid),
        "covid19_ppv": (y == covid, pred == covid),
        "covid19_npv": (y != covid, pred != covid),
        "normal_called_normal": (pred == normal, y == normal),
        "accuracy": (pred == y, np.ones_like(y, dtype=bool)),
    }


_OF = {
    "covid19_sensitivity": "COVID-19 images",
    "covid19_specificity": "images without COVID-19",
    "covid19_ppv": "images called COVID-19",
    "covid19_npv": "images not called COVID-19",
    "normal_called_normal": "normal images",
    "accuracy": "images",
    "covid19_auroc": "COVID-19 images",
    "covid19_vs_normal_auroc": "COVID-19 images",
    "ece": "images",
}


def _estimate(
    value: float | None, bounds: tuple[float, float] | None, n: int, of: str, max_width: float
) -> Estimate:
    if value is None or n == 0:
        return Estimate(None, None, None, n, of, too_wide=n == 0, more_needed=0)
    low, high = bounds if bounds is not None else (None, None)
    too_wide = low is not None and high is not None and high - low > max_width
    more = 0
    if too_wide and low is not None and high is not None:
        more = max(1, math.ceil(n * ((high - low) / max_width) ** 2) - n)
    return Estimate(
        round(value, 4),
        None if low is None else round(low, 4),
        None if high is None else round(high, 4),
        n,
        of,
        too_wide,
        more,
    )


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a share (statsmodels). Why not the bootstrap for
    shares: when every image of a few is called right (6 of 6 normals), every resample
    is 6 of 6 too and the percentile interval collapses to 1.00-1.00, which reads as
    decided; the Wilson interval (0.61-1.00) says how little six images show."""
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
    return float(low), float(high)


def _auroc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """The AUROC from ranks (the Mann-Whitney statistic, ties counting half: the same
    figure as scikit-learn's ``roc_auc_score``, without its input checks, which took
    nearly all of the time of a thousand bootstrap resamples)."""
    n_pos = int(np.count_nonzero(positive))
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def local_validation(
    y_true: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    offsets: Mapping[str, float] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    max_width: float = MAX_WIDTH,
) -> LocalValidation:
    """The figures of a model on labelled images ``y_true`` (class names) with its
    probabilities ``probs`` (rows in ``classes`` order), labels at ``offsets``.

    Shares (sensitivity, specificity, PPV, NPV, normals called normal, accuracy and
    per-class recall) are computed at the labels; the AUROCs and the calibration error
    from the probabilities. Raises ``ValueError`` for labels outside ``classes`` or
    probabilities of the wrong shape."""
    class_list = list(classes)
    y, prob_array = _validated(y_true, probs, class_list)
    covid, normal = class_list.index(COVID), class_list.index(NORMAL)
    pred = labels_at(prob_array, class_list, offsets)
    n = len(y)
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, n, size=(n_bootstrap, n)) if n and n_bootstrap else None

    def share_estimate(hits: np.ndarray, mask: np.ndarray, of: str) -> Estimate:
        count = int(mask.sum())
        value = float(hits[mask].mean()) if count else None
        bounds = wilson_interval(int(hits[mask].sum()), count) if count else None
        return _estimate(value, bounds, count, of, max_width)

    def score_estimate(
        name: str, fn: Callable[[np.ndarray], float | None], chosen: np.ndarray, count: int
    ) -> Estimate:
        value = fn(np.arange(n)[chosen]) if count else None
        bounds = None
        if value is not None and resamples is not None:
            values = [v for r in resamples if (v := fn(r[chosen[r]])) is not None]
            if values:
                bounds = percentile_intervals(np.asarray(values))[0]
        return _estimate(value, bounds, count, _OF[name], max_width)

    figures = {
        name: share_estimate(hits, mask, _OF[name])
        for name, (hits, mask) in _shares(y, pred, covid, normal).items()
    }
    everyone = np.ones(n, dtype=bool)
    figures["covid19_auroc"] = score_estimate(
        "covid19_auroc",
        lambda idx: _auroc(y[idx] == covid, prob_array[idx, covid]),
        everyone,
        int((y == covid).sum()),
    )
    pair = (y == covid) | (y == normal)
    figures["covid19_vs_normal_auroc"] = score_estimate(
        "covid19_vs_normal_auroc",
        lambda idx: _auroc(y[idx] == covid, prob_array[idx, covid]),
        pair,
        int((y == covid).sum()) if (y == normal).any() else 0,
    )
    figures["ece"] = score_estimate(
        "ece",
        lambda idx: expected_calibration_error(y[idx], prob_array[idx]) if len(idx) else None,
        everyone,
        n,
    )
    recall = {
        name: share_estimate(pred == k, y == k, f"{name} images")
        for k, name in enumerate(class_list)
    }
    return LocalValidation(
        n=n,
        classes=class_list,
        counts={name: int((y == k).sum()) for k, name in enumerate(class_list)},
        figures=figures,
        recall=recall,
        reliability=reliability_bins(y, prob_array),
        offsets={str(k): float(v) for k, v in (offsets or {}).items()},
        n_bootstrap=n_bootstrap,
    )


def reliability_bins(y: np.ndarray, probs: np.ndarray) -> list[dict[str, float]]:
    """The reliability plot's points: per confidence bin with images, its mean
    confidence, its accuracy and its count (the bins of the calibration error)."""
    if len(y) == 0:
        return []
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(float)
    bins = np.clip(np.ceil(confidence * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    out = []
    for b in range(ECE_BINS):
        chosen = bins == b
        if chosen.any():
            out.append(
                {
                    "confidence": round(float(confidence[chosen].mean()), 4),
                    "accuracy": round(float(correct[chosen].mean()), 4),
                    "n": int(chosen.sum()),
                }
            )
    return out


@dataclass(frozen=True)
class SiteProposal:
    """The offsets proposed for a target, and what they reach on the site's labels."""

    target: str
    goal: float
    offsets: dict[str, float]
    reached: bool  # the figure's value reaches the goal on these labels
    validation: LocalValidation  # every figure at the proposed offsets, with intervals

    @property
    def figure(self) -> Estimate:
        return self.validation.figures[self.target]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "goal": self.goal,
            "offsets": self.offsets,
            "reached": self.reached,
            "figure": asdict(self.figure),
            "validation": self.validation.to_dict(),
        }


def propose_site_point(
    y_true: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    target: str,
    goal: float,
    grid: tuple[float, ...] = SITE_GRID,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> SiteProposal:
    """The offsets (first class fixed at 0) whose labels reach ``target`` >= ``goal`` on
    these images, and among those the best accuracy, then the smallest offsets; where
    none reaches it, the offsets that come closest. ``target`` is one of
    :data:`TARGETS`. Raises ``ValueError`` for an unknown target, a goal outside
    (0, 1], or images that the target cannot be measured on."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {sorted(TARGETS)}")
    if not 0.0 < goal <= 1.0:
        raise ValueError(f"the goal must be a share in (0, 1], got {goal}")
    class_list = list(classes)
    y, prob_array = _validated(y_true, probs, class_list)
    covid, normal = class_list.index(COVID), class_list.index(NORMAL)

    def hits_mask(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if target == "covid19_sensitivity":
            return p == covid, y == covid
        if target == "covid19_specificity":
            return p != covid, y != covid
        return p == normal, y == normal

    if not hits_mask(y)[1].any():
        raise ValueError(f"no labelled {_OF[target]} at this site: {target} cannot be measured")
    logp = np.log(np.clip(prob_array, 1e-7, 1.0))
    best_key: tuple[float, ...] | None = None
    best: tuple[float, ...] = (0.0,) * len(class_list)
    for rest in itertools.product(sorted({0.0, *grid}), repeat=len(class_list) - 1):
        offsets = (0.0, *rest)
        pred = (logp + np.asarray(offsets)).argmax(axis=1)
        hits, mask = hits_mask(pred)
        value = float(hits[mask].mean())
        key = (-max(0.0, goal - value), float((pred == y).mean()), -sum(abs(o) for o in offsets))
        if best_key is None or key > best_key:
            best_key, best = key, offsets
    chosen = {c: float(o) for c, o in zip(class_list, best, strict=True)}
    validation = local_validation(
        y_true, prob_array, class_list, offsets=chosen, n_bootstrap=n_bootstrap, seed=seed
    )
    reached = validation.figures[target].value
    return SiteProposal(
        target=target,
        goal=goal,
        offsets=chosen,
        reached=reached is not None and reached >= goal,
        validation=validation,
    )

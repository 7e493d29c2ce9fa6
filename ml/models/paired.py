"""Two classifiers on the same images: the difference of their figures, with a paired
bootstrap interval, and whether the images can tell them apart.

Figures measured on different test sets mix the models with the sets; only a paired
measurement (each image scored by both) says which model is better. Resampling draws
patients (every image of a drawn patient, both models' calls on it) with replacement,
recomputes each figure for both models on the same draw, and keeps their difference;
the percentile interval of those differences decides:

- ``better`` / ``worse``: the whole interval lies above / below zero;
- ``undecided``: it straddles zero, the images cannot tell the two apart;
- ``too_few``: fewer images than ``min_images``, no verdict at all (3 images give
  intervals of [-1, 1] and a point difference that means nothing).

Calls are the models' decisions (their served operating points), not probabilities.
No TensorFlow, no Django: the training task and the pages both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Below this many test images no difference is called better or worse.
DEFAULT_MIN_IMAGES = 30
VERDICTS = ("better", "worse", "undecided", "too_few")


@dataclass(frozen=True)
class PairedFigure:
    """One figure of both models on the same images and their difference (B - A)."""

    key: str  # "macro_f1", "accuracy", "covid19.recall", ...
    a: float
    b: float
    diff: float
    ci: tuple[float, float]
    verdict: str  # one of VERDICTS, read for the candidate (B)
    lower_is_better: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "a": self.a,
            "b": self.b,
            "diff": self.diff,
            "ci": list(self.ci),
            "verdict": self.verdict,
            "lower_is_better": self.lower_is_better,
        }

    @classmethod
    def from_json(cls, data: Any) -> PairedFigure:
        if not isinstance(data, dict):
            raise ValueError(f"a paired figure must be an object, not {type(data).__name__}")
        ci = data.get("ci") or [float("nan"), float("nan")]
        verdict = str(data.get("verdict", "undecided"))
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}")
        return cls(
            key=str(data["key"]),
            a=float(data["a"]),
            b=float(data["b"]),
            diff=float(data["diff"]),
            ci=(float(ci[0]), float(ci[1])),
            verdict=verdict,
            lower_is_better=bool(data.get("lower_is_better", False)),
        )


@dataclass(frozen=True)
class PairedComparison:
    """Model A (production) and model B (the candidate) on the same ``n`` images."""

    n: int
    patients: int
    resamples: int
    confidence: float
    min_images: int
    figures: tuple[PairedFigure, ...]
    # Images both call right, only A, only B, neither: where the two disagree.
    agreement: dict[str, int] = field(default_factory=dict)

    @property
    def confidence_percent(self) -> int:
        return round(100 * self.confidence)

    @property
    def decidable(self) -> bool:
        return self.n >= self.min_images

    def figure(self, key: str) -> PairedFigure | None:
        return next((f for f in self.figures if f.key == key), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "patients": self.patients,
            "resamples": self.resamples,
            "confidence": self.confidence,
            "min_images": self.min_images,
            "figures": [f.to_json() for f in self.figures],
            "agreement": dict(self.agreement),
        }

    @classmethod
    def from_json(cls, data: Any) -> PairedComparison:
        if not isinstance(data, dict):
            raise ValueError(f"a paired comparison must be an object, not {type(data).__name__}")
        return cls(
            n=int(data["n"]),
            patients=int(data.get("patients") or data["n"]),
            resamples=int(data.get("resamples", 0)),
            confidence=float(data.get("confidence", 0.95)),
            min_images=int(data.get("min_images", DEFAULT_MIN_IMAGES)),
            figures=tuple(PairedFigure.from_json(f) for f in data.get("figures", [])),
            agreement={str(k): int(v) for k, v in (data.get("agreement") or {}).items()},
        )

    @classmethod
    def from_json_or_none(cls, data: Any) -> PairedComparison | None:
        if not data:
            return None
        try:
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError):
            return None


def _figures(
    y: np.ndarray, pred: np.ndarray, n_classes: int, classes: Sequence[str]
) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and each class's precision and recall of ``pred`` against
    ``y``, for every row of the (resamples x images) index arrays at once. A padded
    slot (``y`` -1, ``pred`` -2) counts in no class and not in accuracy's denominator."""
    figures: dict[str, np.ndarray] = {"accuracy": (pred == y).sum(axis=1) / (y >= 0).sum(axis=1)}
    f1s = []
    for c in range(n_classes):
        truth, called = y == c, pred == c
        tp = (truth & called).sum(axis=1).astype(float)
        fp = (~truth & called).sum(axis=1).astype(float)
        fn = (truth & ~called).sum(axis=1).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        figures[f"{classes[c]}.precision"] = precision
        figures[f"{classes[c]}.recall"] = recall
        f1s.append(f1)
    figures["macro_f1"] = np.mean(f1s, axis=0)
    return figures


def paired_bootstrap(
    y_true: Sequence[str],
    calls_a: Sequence[str],
    calls_b: Sequence[str],
    classes: Sequence[str],
    *,
    patients: Sequence[str] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    min_images: int = DEFAULT_MIN_IMAGES,
    seed: int = 0,
) -> PairedComparison:
    """Compare model A's and model B's calls on the same images (B - A, per figure).

    ``patients`` groups the images: a draw takes whole patients, so the interval is not
    narrowed by several films of one person. Raises ``ValueError`` when the sequences
    differ in length, are empty, or name a class not in ``classes``.
    """
    n = len(y_true)
    if not n:
        raise ValueError("a paired comparison needs at least one image")
    if len(calls_a) != n or len(calls_b) != n:
        raise ValueError(
            f"{n} labels but {len(calls_a)} and {len(calls_b)} calls: the two models must "
            "be scored on the same images"
        )
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({*y_true, *calls_a, *calls_b} - set(index))
    if unknown:
        raise ValueError(f"classes {unknown} are not among {list(classes)}")
    y = np.array([index[c] for c in y_true])
    a = np.array([index[c] for c in calls_a])
    b = np.array([index[c] for c in calls_b])
    groups = np.array(list(patients) if patients is not None else range(n)).astype(str)
    if len(groups) != n:
        raise ValueError(f"{n} images but {len(groups)} patients")
    unique, group_of = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(group_of == g) for g in range(len(unique))]

    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        chosen = rng.integers(0, len(members), size=len(members))
        draws.append(np.concatenate([members[g] for g in chosen]))
    # Draws differ in length when patients have different numbers of images: pad each
    # to the longest with -1 and mask those slots out of every count.
    width = max(len(d) for d in draws)
    idx = np.full((n_resamples, width), -1)
    for row, draw in enumerate(draws):
        idx[row, : len(draw)] = draw
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    # A padded slot is "true class -1, called -2" (see _figures).
    y_draw = np.where(valid, y[safe], -1)
    fa = _figures(y_draw, np.where(valid, a[safe], -2), len(classes), classes)
    fb = _figures(y_draw, np.where(valid, b[safe], -2), len(classes), classes)

    whole_a = _figures(y[None, :], a[None, :], len(classes), classes)
    whole_b = _figures(y[None, :], b[None, :], len(classes), classes)
    tail = (1 - confidence) / 2 * 100
    figures = []
    for key in ["macro_f1", "accuracy"] + [
        f"{c}.{m}" for c in classes for m in ("recall", "precision")
    ]:
        va, vb = float(whole_a[key][0]), float(whole_b[key][0])
        low, high = np.percentile(fb[key] - fa[key], [tail, 100 - tail])
        if n < min_images:
            verdict = "too_few"
        elif low > 0:
            verdict = "better"
        elif high < 0:
            verdict = "worse"
        else:
            verdict = "undecided"
        figures.append(
            PairedFigure(
                key=key, a=va, b=vb, diff=vb - va, ci=(float(low), float(high)), verdict=verdict
            )
        )
    right_a, right_b = a == y, b == y
    agreement = {
        "both_right": int((right_a & right_b).sum()),
        "only_a_right": int((right_a & ~right_b).sum()),
        "only_b_right": int((~right_a & right_b).sum()),
        "both_wrong": int((~right_a & ~right_b).sum()),
    }
    return PairedComparison(
        n=n,
        patients=len(members),
        resamples=n_resamples,
        confidence=confidence,
        min_images=min_images,
        figures=tuple(figures),
        agreement=agreement,
    )

"""The operating point: per-class offsets on the logits, chosen on the validation split.

A model trained with class weights ranks well but its argmax need not sit where the
classes are best told apart (the lung-pooling model ranks COVID-19 first for most
COVID-19 images, AUROC 0.92 on validation, yet calls a third of them pneumonia). The
operating point moves the decision without retraining: offsets ``b`` added to the
log-probabilities, ``argmax(log p + b)``, i.e. a change of class priors. They are
chosen on the **validation** split only (grid search, macro-F1, ties to the smallest
offsets), then written into the bias of the softmax layer ``probs``, so the saved model
*is* the model at its operating point: serving, explanations (Grad-CAM's target class)
and every evaluation use it without knowing about it. The card records the offsets and
the validation macro-F1 before and after; the test split is scored afterwards, once.
scikit-learn is imported only where a point is chosen: the lean inference worker
imports this module for :func:`offset_change` alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

OFFSET_GRID: tuple[float, ...] = tuple(float(v) for v in np.arange(-1.0, 1.0001, 0.25))
OUTPUT_LAYER = "probs"  # the softmax Dense layer every architecture ends with


# The finer grid of the specificity rule: the normal offset decides how many normals
# are called normal, and a quarter step moves that share by several points.
SPECIFICITY_GRID: tuple[float, ...] = tuple(float(v) for v in np.arange(-2.0, 2.0001, 0.125))


@dataclass(frozen=True)
class OperatingPoint:
    offsets: dict[str, float]  # added to each class's log-probability (first class: 0)
    val_macro_f1_before: float
    val_macro_f1_after: float
    grid: tuple[float, ...] = OFFSET_GRID
    method: str = "val-macro-f1"
    # "val-specificity": the targets and what the chosen offsets reach on validation.
    targets: dict[str, float] | None = None
    reached: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "offsets": self.offsets,
            "val_macro_f1_before": round(self.val_macro_f1_before, 4),
            "val_macro_f1_after": round(self.val_macro_f1_after, 4),
            "grid": list(self.grid),
        }
        if self.targets is not None:
            out["targets"] = self.targets
            out["reached"] = {k: round(v, 4) for k, v in (self.reached or {}).items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        return cls(
            offsets={str(k): float(v) for k, v in data["offsets"].items()},
            val_macro_f1_before=float(data.get("val_macro_f1_before", 0.0)),
            val_macro_f1_after=float(data.get("val_macro_f1_after", 0.0)),
            grid=tuple(float(v) for v in data.get("grid", OFFSET_GRID)),
            method=str(data.get("method", "val-macro-f1")),
            targets=data.get("targets"),
            reached=data.get("reached"),
        )


def decision_figures(
    predicted: np.ndarray, y_true: np.ndarray, classes: tuple[str, ...] | list[str]
) -> dict[str, float]:
    """The shares the specificity rule is about, for class indices ``predicted``:
    normals called normal (the specificity of "abnormal"), non-COVID-19 images not called
    COVID-19 (the specificity of COVID-19), COVID-19 recall and abnormal recall."""
    y = np.asarray(y_true)
    pred = np.asarray(predicted)
    normal, covid = list(classes).index("normal"), list(classes).index("covid19")

    def share(mask: np.ndarray, hit: np.ndarray) -> float:
        return float(hit[mask].mean()) if mask.any() else float("nan")

    return {
        "normal_specificity": share(y == normal, pred == normal),
        "covid19_specificity": share(y != covid, pred != covid),
        "covid19_sensitivity": share(y == covid, pred == covid),
        "abnormal_sensitivity": share(y != normal, pred != normal),
    }


def choose_specificity_offsets(
    probs: np.ndarray,
    y_true: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    normal_specificity: float = 0.90,
    covid19_specificity: float = 0.90,
    grid: tuple[float, ...] = SPECIFICITY_GRID,
) -> OperatingPoint:
    """Offsets that call at least ``normal_specificity`` of the validation normals normal
    and keep at least ``covid19_specificity`` of the non-COVID-19 images out of COVID-19;
    among those, the best macro-F1 (ties to the smallest offsets). Where no offsets reach
    both targets, the offsets whose worse shortfall is smallest.

    Why not macro-F1 alone: validation COVID-19 images are mostly publication figures, so
    a point tuned on them favours COVID-19 and fails a hospital's normals. The pooled
    validation normals come from every site, so the share of normals called normal is
    the figure that transfers.
    """
    probs, y = _validated(probs, y_true, len(classes))
    n_classes = len(classes)
    if not (y == list(classes).index("normal")).any():
        raise ValueError("no validation normals: the specificity rule has nothing to measure")
    logp = np.log(np.clip(probs, 1e-7, 1.0))
    before = _macro_f1(y, logp, n_classes)
    targets = {"normal_specificity": normal_specificity, "covid19_specificity": covid19_specificity}
    best_key: tuple[float, ...] | None = None
    best: tuple[tuple[float, ...], float, dict[str, float]] | None = None
    for rest in itertools.product(grid, repeat=n_classes - 1):
        offsets = (0.0, *rest)
        scores = logp + np.asarray(offsets)
        figures = decision_figures(scores.argmax(1), y, classes)
        shortfall = max(
            0.0,
            *(targets[k] - figures[k] for k in targets if not np.isnan(figures[k])),
        )
        f1 = _macro_f1(y, scores, n_classes)
        key = (-shortfall, f1, -sum(abs(o) for o in offsets))
        if best_key is None or key > best_key:
            best_key, best = key, (offsets, f1, figures)
    if best is None:  # an empty grid
        raise ValueError("no offsets to choose from: the grid is empty")
    offsets, f1, figures = best
    return OperatingPoint(
        offsets={c: float(o) for c, o in zip(classes, offsets, strict=True)},
        val_macro_f1_before=before,
        val_macro_f1_after=f1,
        grid=tuple(grid),
        method="val-specificity",
        targets=targets,
        reached=figures,
    )


def _validated(
    probs: np.ndarray, y_true: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validation probabilities and labels as arrays, or a clear error."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if probs.ndim != 2 or probs.shape != (len(y), n_classes):
        raise ValueError(f"probs must be (n, {n_classes}) for {len(y)} labels, got {probs.shape}")
    if len(y) == 0:
        raise ValueError("no validation images to choose an operating point on")
    return probs, y


def _macro_f1(y_true: np.ndarray, scores: np.ndarray, n_classes: int) -> float:
    """Macro-F1 of the argmax of ``scores`` over classes ``0..n_classes-1``, a class with
    no images and no calls counting 0: scikit-learn's ``f1_score(average="macro",
    zero_division=0)``, from one confusion matrix. The grid search calls it hundreds of
    times, where scikit-learn's input checks took nearly all of the time."""
    pred = np.argmax(scores, axis=1)
    confusion = np.bincount(
        np.asarray(y_true, dtype=np.int64) * n_classes + pred, minlength=n_classes * n_classes
    ).reshape(n_classes, n_classes)
    tp = np.diag(confusion).astype(np.float64)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(n_classes), where=denominator > 0)
    return float(f1.mean())


def choose_offsets(
    probs: np.ndarray,
    y_true: np.ndarray,
    classes: tuple[str, ...] | list[str],
    grid: tuple[float, ...] = OFFSET_GRID,
) -> OperatingPoint:
    """The offsets (first class fixed at 0) with the best macro-F1 on these labels.

    Ties go to the smallest total |offset|, so offsets that do not help stay 0.
    """
    probs, y = _validated(probs, y_true, len(classes))
    n_classes = len(classes)
    logp = np.log(np.clip(probs, 1e-7, 1.0))
    before = _macro_f1(y, logp, n_classes)
    zero = (0.0,) * n_classes
    best: tuple[float, float, tuple[float, ...]] = (before, 0.0, zero)
    for rest in itertools.product(grid, repeat=n_classes - 1):
        offsets = (0.0, *rest)
        score = _macro_f1(y, logp + np.asarray(offsets), n_classes)
        key = (score, -sum(abs(o) for o in offsets))
        if key > best[:2]:
            best = (*key, offsets)
    return OperatingPoint(
        offsets={c: float(o) for c, o in zip(classes, best[2], strict=True)},
        val_macro_f1_before=before,
        val_macro_f1_after=best[0],
        grid=tuple(grid),
    )


def apply_offsets(model: Any, point: OperatingPoint, classes: tuple[str, ...] | list[str]) -> None:
    """Add the offsets to the bias of the model's softmax layer (in place). To move a model
    from one point to another, apply the difference (:func:`offset_change`)."""
    layer = model.get_layer(OUTPUT_LAYER)
    kernel, bias = layer.get_weights()
    if bias.shape != (len(classes),):
        raise ValueError(f"layer {OUTPUT_LAYER!r} has {bias.shape[0]} outputs, not {len(classes)}")
    offsets = np.asarray([point.offsets[c] for c in classes], dtype=bias.dtype)
    layer.set_weights([kernel, bias + offsets])


def offset_change(old: OperatingPoint | None, new: OperatingPoint) -> OperatingPoint:
    """The offsets that move a model already at ``old`` to ``new``."""
    before = old.offsets if old is not None else {}
    return OperatingPoint(
        offsets={c: v - before.get(c, 0.0) for c, v in new.offsets.items()},
        val_macro_f1_before=new.val_macro_f1_before,
        val_macro_f1_after=new.val_macro_f1_after,
        grid=new.grid,
        method=new.method,
    )


def operating_curve(
    probs: np.ndarray,
    y_true: np.ndarray,
    classes: tuple[str, ...] | list[str],
    point: OperatingPoint,
    grid: tuple[float, ...] = SPECIFICITY_GRID,
) -> dict[str, Any]:
    """What other points would do on the same validation images: the chosen offsets with
    the normal offset moved along ``grid`` (the "normal vs abnormal" trade-off), each
    row with the figures of :func:`decision_figures` and macro-F1; plus the continuous
    ROC of p(abnormal) = 1 - p(normal). ``probs`` are the model's probabilities *before*
    the offsets. Stored on the card, drawn on the version page, and the rows a model
    admin may choose from."""
    from sklearn.metrics import roc_auc_score, roc_curve

    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    classes = list(classes)
    normal = classes.index("normal")
    logp = np.log(np.clip(probs, 1e-7, 1.0))
    rows = []
    for value in grid:
        offsets = dict(point.offsets)
        offsets["normal"] = float(value)
        scores = logp + np.asarray([offsets[c] for c in classes])
        figures = decision_figures(scores.argmax(1), y, classes)
        rows.append(
            {
                "offsets": offsets,
                **{k: round(v, 4) for k, v in figures.items()},
                "macro_f1": round(_macro_f1(y, scores, len(classes)), 4),
                "chosen": offsets == point.offsets,
            }
        )
    abnormal = y != normal
    roc: dict[str, Any] = {"fpr": [], "tpr": [], "auroc": None}
    if abnormal.any() and (~abnormal).any():
        fpr, tpr, _ = roc_curve(abnormal, 1.0 - probs[:, normal])
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 101)).round().astype(int))
        roc = {
            "fpr": [round(float(v), 4) for v in fpr[keep]],
            "tpr": [round(float(v), 4) for v in tpr[keep]],
            "auroc": round(float(roc_auc_score(abnormal, 1.0 - probs[:, normal])), 4),
        }
    return {"rows": rows, "roc": roc, "n": len(y), "n_normal": int((~abnormal).sum())}

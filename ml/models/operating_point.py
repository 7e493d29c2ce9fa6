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
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

OFFSET_GRID: tuple[float, ...] = tuple(float(v) for v in np.arange(-1.0, 1.0001, 0.25))
OUTPUT_LAYER = "probs"  # the softmax Dense layer every architecture ends with


@dataclass(frozen=True)
class OperatingPoint:
    offsets: dict[str, float]  # added to each class's log-probability (first class: 0)
    val_macro_f1_before: float
    val_macro_f1_after: float
    grid: tuple[float, ...] = OFFSET_GRID

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "val-macro-f1",
            "offsets": self.offsets,
            "val_macro_f1_before": round(self.val_macro_f1_before, 4),
            "val_macro_f1_after": round(self.val_macro_f1_after, 4),
            "grid": list(self.grid),
        }


def _macro_f1(y_true: np.ndarray, scores: np.ndarray, n_classes: int) -> float:
    return float(
        f1_score(
            y_true,
            np.argmax(scores, axis=1),
            labels=list(range(n_classes)),
            average="macro",
            zero_division=0,
        )
    )


def choose_offsets(
    probs: np.ndarray,
    y_true: np.ndarray,
    classes: tuple[str, ...] | list[str],
    grid: tuple[float, ...] = OFFSET_GRID,
) -> OperatingPoint:
    """The offsets (first class fixed at 0) with the best macro-F1 on these labels.

    Ties go to the smallest total |offset|, so offsets that do not help stay 0.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    n_classes = len(classes)
    if probs.ndim != 2 or probs.shape != (len(y), n_classes):
        raise ValueError(f"probs must be (n, {n_classes}) for {len(y)} labels, got {probs.shape}")
    if len(y) == 0:
        raise ValueError("no validation images to choose an operating point on")
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
    """Add the offsets to the bias of the model's softmax layer (in place)."""
    layer = model.get_layer(OUTPUT_LAYER)
    kernel, bias = layer.get_weights()
    if bias.shape != (len(classes),):
        raise ValueError(f"layer {OUTPUT_LAYER!r} has {bias.shape[0]} outputs, not {len(classes)}")
    offsets = np.asarray([point.offsets[c] for c in classes], dtype=bias.dtype)
    layer.set_weights([kernel, bias + offsets])

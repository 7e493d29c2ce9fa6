"""A linear score over hand-made image features and its threshold (NumPy only): the
lateral-view check (``ml.serving.viewcheck``) and the CT modality check
(``ml.ct.modality``) are both one, saved as an ``.npz`` of arrays with a ``.json`` card."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class LinearCheck:
    """Standardise the features (``mean``, ``scale``), then ``weights . z + bias``: a logit
    compared with ``threshold`` by the subclass."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float
    card: dict[str, Any] = field(default_factory=dict)

    def scores(self, feats: np.ndarray) -> np.ndarray:
        z = (np.asarray(feats, dtype=np.float32) - self.mean) / self.scale
        logits: np.ndarray = z @ self.weights + self.bias
        return logits

    def linear_arrays(self) -> dict[str, Any]:
        """What ``save`` writes of the linear score (a subclass adds its own arrays)."""
        return {
            "mean": self.mean,
            "scale": self.scale,
            "weights": self.weights,
            "bias": np.float64(self.bias),
            "threshold": np.float64(self.threshold),
        }


def write_check(path: Path, arrays: dict[str, Any], card: dict[str, Any]) -> None:
    path = Path(path)
    np.savez_compressed(path, **arrays)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")


def read_check(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """The saved arrays, the card (empty without its ``.json``) and the keyword arguments
    of the linear score's fields."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    fields = {
        "mean": arrays["mean"],
        "scale": arrays["scale"],
        "weights": arrays["weights"],
        "bias": float(arrays["bias"]),
        "threshold": float(arrays["threshold"]),
        "card": card,
    }
    return arrays, card, fields


def check_feature_count(
    check: LinearCheck, path: Path, expected: int, *, what: str, refit: str
) -> None:
    """Refuse a saved check made for another number of features than this code makes."""
    if check.weights.shape != (expected,) or check.mean.shape != (expected,):
        raise ValueError(
            f"{path}: {what} for {check.weights.shape} features; this code makes "
            f"{expected} (refit with {refit})."
        )

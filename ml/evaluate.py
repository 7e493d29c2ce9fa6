"""Evaluation of a classifier's probabilities against reference labels.

Why this module exists: a model version is only worth promoting if its
performance is reported with its uncertainty, per class and per data source,
in a form that both machines (``metrics.json``) and people (``report.md`` with
plots) can read. The metrics come from scikit-learn so that their definitions
are the standard ones; the only hand-written computation is the expected
calibration error, which scikit-learn does not provide.

This module is framework code: it imports neither Django nor TensorFlow, so it
can run in a notebook, a CI job or the worker alike.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

# Reports are written by headless processes (CI, workers): never ask for a display.
matplotlib.use("Agg")
import matplotlib.pyplot as plt

logger = logging.getLogger(__name__)

ECE_BINS = 15
CI_PERCENTILES = (2.5, 97.5)
BOOTSTRAP_METHOD = "percentile, resampling images with replacement"
# Upper bound on (resamples x items) handed to scikit-learn in one call, to bound memory.
_BOOTSTRAP_CHUNK_ITEMS = 2_000_000
_ROW_SUM_TOLERANCE = 1e-3


def evaluate_predictions(
    y_true: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    sources: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Score predicted probabilities against reference labels, with bootstrap intervals.

    Why the shape of the result: it is written verbatim to ``metrics.json`` and
    compared across model versions, so it holds only JSON types, and values that
    are undefined (for instance the ROC-AUC of a class that no image belongs to)
    are ``None`` rather than NaN, which JSON cannot represent.

    The predicted label of an image is the argmax of its row of ``probs`` (the first
    class wins a tie). Precision, recall and F1 use ``zero_division=0`` and
    macro-F1 averages over every class in ``classes``, including classes absent
    from ``y_true`` (which score 0), as scikit-learn does when given ``labels``.

    Intervals are 95% percentile bootstrap intervals: images are resampled with
    replacement ``n_bootstrap`` times with ``np.random.default_rng(seed)``, so the
    same inputs and seed always give the same result. A class that happens to be
    absent from a resample scores 0 there, like any class absent from the data.
    With ``n_bootstrap=0`` every interval is ``None``.

    ``sources`` (one per image, e.g. the dataset or hospital an image came from)
    adds ``per_source``: the same evaluation, without its own ``per_source``,
    for each source's images, so that a model that only works on one source shows.

    Raises ``ValueError`` for inputs that would otherwise give silently wrong
    numbers: labels outside ``classes``, mismatched lengths, or rows of ``probs``
    that are not probability distributions (such as logits).
    """
    class_list = list(classes)
    true_idx, prob_array = _validate(y_true, probs, class_list)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    source_list: list[str] | None = None
    if sources is not None:
        source_list = [str(s) for s in sources]
        if len(source_list) != len(true_idx):
            raise ValueError(
                f"sources has {len(source_list)} entries but y_true has {len(true_idx)}"
            )

    result = _evaluate(true_idx, prob_array, class_list, n_bootstrap=n_bootstrap, seed=seed)
    if source_list is not None:
        source_array = np.asarray(source_list, dtype=object)
        result["per_source"] = {
            source: _evaluate(
                true_idx[source_array == source],
                prob_array[source_array == source],
                class_list,
                n_bootstrap=n_bootstrap,
                seed=seed,
            )
            for source in sorted(set(source_list))
        }
        for sub in result["per_source"].values():
            # A source holds only some classes (the paediatric set has no COVID-19):
            # averaging F1 over absent classes would count zeros that mean nothing.
            present = [name for name, row in sub["per_class"].items() if row["support"] > 0]
            sub["classes_present"] = present
            sub["macro_f1_present"] = float(
                np.mean([sub["per_class"][name]["f1"] for name in present])
            )
    logger.info(
        "Evaluated %d images: accuracy %.4f, macro-F1 %.4f%s",
        result["n"],
        result["accuracy"],
        result["macro_f1"],
        f", {len(result['per_source'])} sources" if "per_source" in result else "",
    )
    return result


def write_report(
    result: dict,
    y_true: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    out_dir: Path,
    *,
    title: str = "Evaluation",
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and the PNG plots for one evaluation.

    Why both files: ``metrics.json`` is what tooling compares between model
    versions; ``report.md`` is what a reviewer reads before promoting a model,
    with the plots embedded by relative path so the folder can be moved or
    attached to a model card as a whole.

    ``result`` is the output of :func:`evaluate_predictions` for the same
    ``y_true``, ``probs`` and ``classes``; the raw inputs are needed again
    because ROC and reliability curves are not summarised in ``result``.
    ``out_dir`` is created if missing; existing files of the same names are
    replaced. Returns the path of every file written, by kind.
    """
    class_list = list(classes)
    true_idx, prob_array = _validate(y_true, probs, class_list)
    if result.get("n") != len(true_idx):
        raise ValueError(f"result is for {result.get('n')} images but y_true has {len(true_idx)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "metrics.json",
        "markdown": out_dir / "report.md",
        "confusion_matrix": out_dir / "confusion_matrix.png",
        "roc": out_dir / "roc.png",
        "calibration": out_dir / "calibration.png",
    }
    paths["json"].write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    _plot_confusion_matrix(result, paths["confusion_matrix"], title)
    _plot_roc(true_idx, prob_array, class_list, paths["roc"], title)
    _plot_calibration(true_idx, prob_array, paths["calibration"], title)
    paths["markdown"].write_text(_markdown(result, class_list, paths, title))
    logger.info("Wrote evaluation report to %s", out_dir)
    return paths


# --- computation ----------------------------------------------------------------------------


def _validate(
    y_true: Sequence[str], probs: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Check the inputs and return class indices of ``y_true`` and ``probs`` as floats."""
    if not classes:
        raise ValueError("classes is empty")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicates: {classes}")
    index = {name: i for i, name in enumerate(classes)}
    labels = list(y_true)
    unknown = sorted({str(label) for label in labels if label not in index})
    if unknown:
        raise ValueError(f"labels not in classes {classes}: {unknown}")
    if not labels:
        raise ValueError("nothing to evaluate: y_true is empty")
    prob_array = np.asarray(probs, dtype=np.float64)
    if prob_array.shape != (len(labels), len(classes)):
        raise ValueError(
            f"probs has shape {prob_array.shape}, expected {(len(labels), len(classes))}"
        )
    if not np.all(np.isfinite(prob_array)) or np.any(prob_array < 0):
        raise ValueError("probs must be finite and non-negative")
    if not np.allclose(prob_array.sum(axis=1), 1.0, rtol=0, atol=_ROW_SUM_TOLERANCE):
        raise ValueError("rows of probs must sum to 1 (probabilities, not logits)")
    return np.array([index[label] for label in labels], dtype=np.int64), prob_array


def _evaluate(
    true_idx: np.ndarray, probs: np.ndarray, classes: list[str], *, n_bootstrap: int, seed: int
) -> dict:
    """Evaluate one set of images (the whole set or one source's subset)."""
    n_classes = len(classes)
    label_ids = list(range(n_classes))
    pred_idx = np.argmax(probs, axis=1)

    precision, recall, f1, support = precision_recall_fscore_support(
        true_idx, pred_idx, labels=label_ids, average=None, zero_division=0
    )
    macro_f1 = f1_score(true_idx, pred_idx, labels=label_ids, average="macro", zero_division=0)
    matrix = confusion_matrix(true_idx, pred_idx, labels=label_ids)
    aucs = [_roc_auc(true_idx == c, probs[:, c]) for c in label_ids]
    defined_aucs = [auc for auc in aucs if auc is not None]

    intervals = _bootstrap_intervals(true_idx, pred_idx, n_classes, n_bootstrap, seed)

    per_class = {}
    for c, name in enumerate(classes):
        per_class[name] = {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
            "precision_ci": intervals["precision"][c] if intervals else None,
            "recall_ci": intervals["recall"][c] if intervals else None,
            "f1_ci": intervals["f1"][c] if intervals else None,
            "roc_auc": aucs[c],
        }
    return {
        "n": len(true_idx),
        "accuracy": float(accuracy_score(true_idx, pred_idx)),
        "macro_f1": float(macro_f1),
        "macro_f1_ci": intervals["macro_f1"] if intervals else None,
        "per_class": per_class,
        "confusion_matrix": {
            "labels": list(classes),
            "matrix": [[int(v) for v in row] for row in matrix],
        },
        "roc_auc_macro": float(np.mean(defined_aucs)) if defined_aucs else None,
        "ece": expected_calibration_error(true_idx, probs),
        "bootstrap": {"n": n_bootstrap, "seed": seed, "method": BOOTSTRAP_METHOD},
    }


def _roc_auc(is_class: np.ndarray, scores: np.ndarray) -> float | None:
    """One-vs-rest ROC-AUC, or None where it is undefined (all or no images in the class)."""
    if is_class.all() or not is_class.any():
        return None
    return float(roc_auc_score(is_class, scores))


def expected_calibration_error(true_idx: np.ndarray, probs: np.ndarray) -> float:
    """Expected calibration error (ECE) of the top-1 confidence, 15 equal-width bins.

    Why: a triage tool shows its confidence, so that confidence should mean what
    it says; ECE summarises the gap in one number (Guo et al., 2017).

    Definition: with confidence ``conf_i = max_k probs[i, k]`` and ``correct_i``
    whether the argmax equals the true class, images are put into 15 bins
    ``(0, 1/15], (1/15, 2/15], ..., (14/15, 1]`` by confidence, and
    ``ECE = sum_b (|B_b| / n) * |mean(correct in B_b) - mean(conf in B_b)|``
    ``= sum_b |sum(correct in B_b) - sum(conf in B_b)| / n``, empty bins contributing 0.
    When every prediction is correct this is ``1 - mean(conf)``.
    """
    confidence = probs.max(axis=1)
    correct = (np.argmax(probs, axis=1) == true_idx).astype(np.float64)
    # Right-closed bins; a confidence of exactly 0 (impossible for a softmax) joins the first.
    bins = np.clip(np.ceil(confidence * ECE_BINS).astype(np.int64) - 1, 0, ECE_BINS - 1)
    accuracy_sum = np.bincount(bins, weights=correct, minlength=ECE_BINS)
    confidence_sum = np.bincount(bins, weights=confidence, minlength=ECE_BINS)
    return float(np.abs(accuracy_sum - confidence_sum).sum() / len(true_idx))


def _bootstrap_metrics(
    true_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int, resamples: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 for each resample, each of shape (B, n_classes).

    ``resamples`` is a (B, n) array of image indices. Why the relabelling: calling
    scikit-learn once per resample costs about 2 ms each, so 1000 resamples take
    seconds. Instead, class ``c`` in resample ``b`` becomes label ``b * n_classes + c``
    for both truth and prediction, and one call scores all B x n_classes labels:
    a label only ever meets labels of its own resample, so each one's counts, and
    hence its precision, recall and F1, are exactly those of that resample alone.
    """
    n_resamples = resamples.shape[0]
    offsets = (np.arange(n_resamples, dtype=np.int64) * n_classes)[:, None]
    relabelled_true = (true_idx[resamples] + offsets).ravel()
    relabelled_pred = (pred_idx[resamples] + offsets).ravel()
    precision, recall, f1, _ = precision_recall_fscore_support(
        relabelled_true,
        relabelled_pred,
        labels=np.arange(n_resamples * n_classes),
        average=None,
        zero_division=0,
    )
    shape = (n_resamples, n_classes)
    return precision.reshape(shape), recall.reshape(shape), f1.reshape(shape)


def _bootstrap_intervals(
    true_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int, n_bootstrap: int, seed: int
) -> dict | None:
    """95% percentile intervals for macro-F1 and per-class precision, recall and F1."""
    if n_bootstrap == 0:
        return None
    n = len(true_idx)
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, n, size=(n_bootstrap, n))
    chunk = max(1, _BOOTSTRAP_CHUNK_ITEMS // n)
    parts = [
        _bootstrap_metrics(true_idx, pred_idx, n_classes, resamples[start : start + chunk])
        for start in range(0, n_bootstrap, chunk)
    ]
    precision, recall, f1 = (np.concatenate(metric) for metric in zip(*parts, strict=True))

    def interval(values: np.ndarray) -> list[list[float]]:
        bounds = np.percentile(values, CI_PERCENTILES, axis=0)  # (2, ...) lo and hi
        return np.atleast_2d(bounds.T).tolist()

    return {
        "precision": [[float(v) for v in pair] for pair in interval(precision)],
        "recall": [[float(v) for v in pair] for pair in interval(recall)],
        "f1": [[float(v) for v in pair] for pair in interval(f1)],
        "macro_f1": [float(v) for v in interval(f1.mean(axis=1))[0]],
    }


# --- report ---------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _fmt_ci(value: float | None, ci: Sequence[float] | None) -> str:
    if ci is None:
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _cell(text: object) -> str:
    """Escape a value for a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _markdown(result: dict, classes: list[str], paths: dict[str, Path], title: str) -> str:
    """Render the human-readable report."""
    boot = result.get("bootstrap", {})
    lines = [
        f"# {title}",
        "",
        f"- **Images (n):** {result['n']}",
        f"- **Accuracy:** {_fmt(result['accuracy'])}",
        f"- **Macro-F1:** {_fmt_ci(result['macro_f1'], result['macro_f1_ci'])}",
        f"- **Macro ROC-AUC (one-vs-rest):** {_fmt(result['roc_auc_macro'])}",
        f"- **ECE (top-1 confidence, {ECE_BINS} equal-width bins):** {_fmt(result['ece'])}",
        "",
        "Intervals in brackets are 95% bootstrap intervals "
        f"({boot.get('method', BOOTSTRAP_METHOD)}; "
        f"{boot.get('n')} resamples, seed {boot.get('seed')}).",
        "",
        "## Per class",
        "",
    ]
    class_rows = []
    for name in classes:
        m = result["per_class"][name]
        class_rows.append(
            [
                name,
                _fmt_ci(m["precision"], m["precision_ci"]),
                _fmt_ci(m["recall"], m["recall_ci"]),
                _fmt_ci(m["f1"], m["f1_ci"]),
                m["support"],
                _fmt(m["roc_auc"]),
            ]
        )
    lines += _table(["class", "precision", "recall", "F1", "support", "ROC-AUC"], class_rows)

    cm = result["confusion_matrix"]
    lines += ["", "## Confusion matrix", "", "Rows: true class; columns: predicted class.", ""]
    lines += _table(
        ["true \\ predicted", *cm["labels"]],
        [[label, *row] for label, row in zip(cm["labels"], cm["matrix"], strict=True)],
    )
    lines += ["", f"![Confusion matrix]({paths['confusion_matrix'].name})", ""]

    lines += [
        "## ROC curves",
        "",
        "One-vs-rest; classes with no images are left out.",
        "",
        f"![ROC curves]({paths['roc'].name})",
        "",
        "## Calibration",
        "",
        f"ECE: {_fmt(result['ece'])}.",
        "",
        f"![Reliability diagram]({paths['calibration'].name})",
        "",
    ]

    per_source = result.get("per_source")
    if per_source:
        lines += ["## Per source", ""]
        rows = [
            [
                source,
                sub["n"],
                _fmt(sub["accuracy"]),
                _fmt(sub.get("macro_f1_present")),
                *(
                    _fmt(sub["per_class"][name]["recall"])
                    if sub["per_class"][name]["support"]
                    else "n/a"
                    for name in classes
                ),
            ]
            for source, sub in per_source.items()
        ]
        header = [
            "source",
            "n",
            "accuracy",
            "macro-F1 (classes present)",
            *(f"recall {c}" for c in classes),
        ]
        lines += [*_table(header, rows), ""]
    return "\n".join(lines)


def _plot_confusion_matrix(result: dict, path: Path, title: str) -> None:
    cm = result["confusion_matrix"]
    matrix = np.asarray(cm["matrix"], dtype=np.int64)
    labels = cm["labels"]
    size = 1.2 + 1.1 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    try:
        image = ax.imshow(matrix, cmap="Blues")
        fig.colorbar(image, ax=ax)
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, labels, rotation=45, ha="right")
        ax.set_yticks(ticks, labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: confusion matrix")
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, col), value in np.ndenumerate(matrix):
            colour = "white" if value > threshold else "black"
            ax.text(col, row, str(value), ha="center", va="center", color=colour)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def _plot_roc(
    true_idx: np.ndarray, probs: np.ndarray, classes: list[str], path: Path, title: str
) -> None:
    fig, ax = plt.subplots(figsize=(6, 6))
    try:
        for c, name in enumerate(classes):
            is_class = true_idx == c
            auc = _roc_auc(is_class, probs[:, c])
            if auc is None:
                continue  # absent (or the only) class: no ROC curve exists
            fpr, tpr, _ = roc_curve(is_class, probs[:, c])
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{title}: ROC (one-vs-rest)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def _plot_calibration(true_idx: np.ndarray, probs: np.ndarray, path: Path, title: str) -> None:
    confidence = probs.max(axis=1)
    correct = (np.argmax(probs, axis=1) == true_idx).astype(np.int64)
    fig, (ax, hist_ax) = plt.subplots(
        2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    try:
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
        if correct.all() or not correct.any():
            # calibration_curve needs both outcomes; with one, accuracy is constant.
            ax.plot([confidence.mean()], [float(correct.mean())], "o", label="top-1")
        else:
            frac_correct, mean_conf = calibration_curve(
                correct, confidence, n_bins=ECE_BINS, strategy="uniform"
            )
            ax.plot(mean_conf, frac_correct, marker="o", label="top-1")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: reliability diagram")
        ax.legend(loc="upper left")
        hist_ax.hist(confidence, bins=ECE_BINS, range=(0, 1), color="grey")
        hist_ax.set_xlim(0, 1)
        hist_ax.set_xlabel("top-1 confidence")
        hist_ax.set_ylabel("images")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)

"""Evaluation of a classifier's probabilities against reference labels.

Why this module exists: a model version is only worth promoting if its
performance is reported with its uncertainty, per class and per data source,
in a form that both machines (``metrics.json``) and people (``report.md`` with
plots) can read. The metrics come from scikit-learn so that their definitions
are the standard ones; the only hand-written computation is the expected
calibration error, which scikit-learn does not provide.

The result is an :class:`ml.models.metrics.EvaluationResult`: the typed contract that
``metrics.json``, the model card and the registry store with ``to_json`` and read
back with ``from_json``. It also summarises the curves (ROC per class, reliability
bins, the confidence histogram) in a few kilobytes, so the plots can be drawn again
from ``metrics.json`` or the database row alone, without the model or the images:
:func:`figure_confusion_matrix`, :func:`figure_roc` and :func:`figure_calibration`
draw them with matplotlib's object API (no pyplot state), so a multi-threaded web
process can call them.

This module is framework code: it imports neither Django nor TensorFlow, so it
can run in a notebook, a CI job, the worker or the web process alike.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from ml.models.metrics import (
    BootstrapInfo,
    ClassMetrics,
    ConfusionMatrix,
    EvaluationResult,
    ShortcutMetrics,
    SourceMetrics,
)

logger = logging.getLogger(__name__)

ECE_BINS = 15
CI_PERCENTILES = (2.5, 97.5)
BOOTSTRAP_METHOD = "percentile, resampling images with replacement"
# Upper bound on (resamples x items) handed to scikit-learn in one call, to bound memory.
_BOOTSTRAP_CHUNK_ITEMS = 2_000_000
_ROW_SUM_TOLERANCE = 1e-3
# The stored curves: enough points to draw them, few enough to keep metrics.json small.
CURVE_DECIMALS = 4
ROC_MAX_POINTS = 200
# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")
_LINE_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_CHANCE_COLOUR = "#555555"  # dark grey: 7.5:1 on white


def evaluate_predictions(
    y_true: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    sources: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    shortcuts: ShortcutMetrics | None = None,
) -> EvaluationResult:
    """Score predicted probabilities against reference labels, with bootstrap intervals.

    Why the shape of the result: an :class:`~ml.models.metrics.EvaluationResult` is
    what ``metrics.json``, the model card and the registry store (``to_json``), and
    what they are read back into (``from_json``). Values that are undefined (for
    instance the ROC-AUC of a class that no image belongs to) are ``None`` rather than
    NaN, which JSON cannot represent.

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

    ``curves`` (whole set only, see :func:`curves`) holds the ROC curves, the
    reliability bins and the confidence histogram, rounded and thinned, so the
    figures can be drawn from the result alone.

    ``shortcuts`` (see :func:`ml.models.shortcuts.shortcut_metrics`, which needs the
    model and the lung masks) is carried along as the result's ``shortcuts``.

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

    whole = _evaluate(true_idx, prob_array, class_list, n_bootstrap=n_bootstrap, seed=seed)
    per_source: dict[str, SourceMetrics] = {}
    if source_list is not None:
        source_array = np.asarray(source_list, dtype=object)
        for source in sorted(set(source_list)):
            chosen = source_array == source
            per_source[source] = _evaluate(
                true_idx[chosen], prob_array[chosen], class_list, n_bootstrap=n_bootstrap, seed=seed
            )
    result = EvaluationResult(
        n=whole.n,
        accuracy=whole.accuracy,
        macro_f1=whole.macro_f1,
        macro_f1_ci=whole.macro_f1_ci,
        per_class=whole.per_class,
        confusion_matrix=whole.confusion_matrix,
        roc_auc_macro=whole.roc_auc_macro,
        ece=whole.ece,
        bootstrap=whole.bootstrap,
        per_source=per_source,
        curves=curves(true_idx, prob_array, class_list),
        shortcuts=shortcuts,
    )
    logger.info(
        "Evaluated %d images: accuracy %.4f, macro-F1 %.4f%s",
        whole.n,
        whole.accuracy,
        whole.macro_f1,
        f", {len(per_source)} sources" if per_source else "",
    )
    return result


def write_report(
    result: EvaluationResult,
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
    ``y_true``, ``probs`` and ``classes``; the plots are drawn from ``result``
    alone. The raw inputs are still taken, to check that ``result`` belongs to
    them, and to add ``curves`` to a result computed before they existed.
    ``out_dir`` is created if missing; existing files of the same names are
    replaced. ``metrics.json`` is ``result.to_json()``; ``report.md`` has a section on
    the shortcut tests when ``result.shortcuts`` is set. Returns the path of every
    file written, by kind.
    """
    class_list = list(classes)
    true_idx, prob_array = _validate(y_true, probs, class_list)
    if result.n != len(true_idx):
        raise ValueError(f"result is for {result.n} images but y_true has {len(true_idx)}")
    if result.curves is None:
        result = replace(result, curves=curves(true_idx, prob_array, class_list))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "metrics.json",
        "markdown": out_dir / "report.md",
        "confusion_matrix": out_dir / "confusion_matrix.png",
        "roc": out_dir / "roc.png",
        "calibration": out_dir / "calibration.png",
    }
    paths["json"].write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")
    for kind, draw in (
        ("confusion_matrix", figure_confusion_matrix),
        ("roc", figure_roc),
        ("calibration", figure_calibration),
    ):
        paths[kind].write_bytes(figure_bytes(draw(result, title), "png"))
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
) -> SourceMetrics:
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

    per_class = {
        name: ClassMetrics(
            precision=float(precision[c]),
            recall=float(recall[c]),
            f1=float(f1[c]),
            support=int(support[c]),
            precision_ci=intervals["precision"][c] if intervals else None,
            recall_ci=intervals["recall"][c] if intervals else None,
            f1_ci=intervals["f1"][c] if intervals else None,
            roc_auc=aucs[c],
        )
        for c, name in enumerate(classes)
    }
    # A source holds only some classes (the paediatric set has no COVID-19): averaging
    # F1 over absent classes would count zeros that mean nothing.
    present = tuple(name for name, row in per_class.items() if row.support > 0)
    return SourceMetrics(
        n=len(true_idx),
        accuracy=float(accuracy_score(true_idx, pred_idx)),
        macro_f1=float(macro_f1),
        macro_f1_ci=intervals["macro_f1"] if intervals else None,
        per_class=per_class,
        confusion_matrix=ConfusionMatrix(
            labels=tuple(classes), matrix=tuple(tuple(int(v) for v in row) for row in matrix)
        ),
        roc_auc_macro=float(np.mean(defined_aucs)) if defined_aucs else None,
        ece=expected_calibration_error(true_idx, probs),
        bootstrap=BootstrapInfo(n=n_bootstrap, seed=seed, method=BOOTSTRAP_METHOD),
        classes_present=present,
        macro_f1_present=float(np.mean([per_class[name].f1 for name in present])),
    )


def _roc_auc(is_class: np.ndarray, scores: np.ndarray) -> float | None:
    """One-vs-rest ROC-AUC, or None where it is undefined (all or no images in the class)."""
    if is_class.all() or not is_class.any():
        return None
    return float(roc_auc_score(is_class, scores))


def _confidence_bins(true_idx: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Top-1 confidence, correctness (0/1) and ECE bin index (0..ECE_BINS-1) per image.

    Right-closed bins ``(0, 1/15], ..., (14/15, 1]``; a confidence of exactly 0
    (impossible for a softmax) joins the first.
    """
    confidence = probs.max(axis=1)
    correct = (np.argmax(probs, axis=1) == true_idx).astype(np.float64)
    bins = np.clip(np.ceil(confidence * ECE_BINS).astype(np.int64) - 1, 0, ECE_BINS - 1)
    return confidence, correct, bins


def _rounded(values: Sequence[float] | np.ndarray) -> list[float]:
    return [round(float(v), CURVE_DECIMALS) for v in values]


def _thin(fpr: np.ndarray, tpr: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points, evenly spaced along the curve, first and last kept."""
    if len(fpr) <= max_points:
        return fpr, tpr
    keep = np.unique(np.round(np.linspace(0, len(fpr) - 1, max_points)).astype(np.int64))
    return fpr[keep], tpr[keep]


def curves(true_idx: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """ROC curves, reliability bins and confidence histogram, small enough to store.

    Why: the figures of a model version must be drawable from its stored metrics
    (web process, no model, no images). Shape (JSON types only, floats rounded to
    4 decimals)::

        {"roc": {class: {"fpr": [...], "tpr": [...], "auc": float}},
         "calibration": {"bins": 15, "mean_confidence": [...], "accuracy": [...],
                         "count": [...]},
         "confidence_histogram": {"edges": [16 floats], "counts": [15 ints]}}

    ``roc`` omits classes whose curve is undefined (no image, or every image, in
    the class); each curve is scikit-learn's ``roc_curve`` with
    ``drop_intermediate=True``, thinned to at most 200 points keeping both ends.
    ``calibration`` lists only non-empty bins, in increasing confidence; its bins
    are those of :func:`expected_calibration_error`, as are the histogram's.
    """
    roc = {}
    for c, name in enumerate(classes):
        is_class = true_idx == c
        auc = _roc_auc(is_class, probs[:, c])
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(is_class, probs[:, c], drop_intermediate=True)
        fpr, tpr = _thin(fpr, tpr, ROC_MAX_POINTS)
        roc[str(name)] = {
            "fpr": _rounded(fpr),
            "tpr": _rounded(tpr),
            "auc": round(auc, CURVE_DECIMALS),
        }

    confidence, correct, bins = _confidence_bins(true_idx, probs)
    count = np.bincount(bins, minlength=ECE_BINS)
    confidence_sum = np.bincount(bins, weights=confidence, minlength=ECE_BINS)
    correct_sum = np.bincount(bins, weights=correct, minlength=ECE_BINS)
    filled = count > 0
    return {
        "roc": roc,
        "calibration": {
            "bins": ECE_BINS,
            "mean_confidence": _rounded(confidence_sum[filled] / count[filled]),
            "accuracy": _rounded(correct_sum[filled] / count[filled]),
            "count": [int(v) for v in count[filled]],
        },
        "confidence_histogram": {
            "edges": _rounded(np.linspace(0.0, 1.0, ECE_BINS + 1)),
            "counts": [int(v) for v in count],
        },
    }


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
    confidence, correct, bins = _confidence_bins(true_idx, probs)
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
) -> dict[str, Any] | None:
    """95% percentile intervals for accuracy, macro-F1 and per-class precision, recall, F1."""
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
    accuracy = (true_idx[resamples] == pred_idx[resamples]).mean(axis=1)
    return {
        "accuracy": percentile_intervals(accuracy)[0],
        "precision": percentile_intervals(precision),
        "recall": percentile_intervals(recall),
        "f1": percentile_intervals(f1),
        "macro_f1": percentile_intervals(f1.mean(axis=1))[0],
    }


def percentile_intervals(values: np.ndarray) -> list[tuple[float, float]]:
    """95% percentile intervals of bootstrap ``values``, (B,) or (B, k): (low, high) per column."""
    bounds = np.percentile(values, CI_PERCENTILES, axis=0)  # (2, ...) lo and hi
    return [(float(low), float(high)) for low, high in np.atleast_2d(bounds.T).tolist()]


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


def _markdown(
    result: EvaluationResult, classes: list[str], paths: dict[str, Path], title: str
) -> str:
    """Render the human-readable report."""
    boot = result.bootstrap
    lines = [
        f"# {title}",
        "",
        f"- **Images (n):** {result.n}",
        f"- **Accuracy:** {_fmt(result.accuracy)}",
        f"- **Macro-F1:** {_fmt_ci(result.macro_f1, result.macro_f1_ci)}",
        f"- **Macro ROC-AUC (one-vs-rest):** {_fmt(result.roc_auc_macro)}",
        f"- **ECE (top-1 confidence, {ECE_BINS} equal-width bins):** {_fmt(result.ece)}",
        "",
        "Intervals in brackets are 95% bootstrap intervals "
        f"({boot.method if boot else BOOTSTRAP_METHOD}; "
        f"{boot.n if boot else None} resamples, seed {boot.seed if boot else None}).",
        "",
        "## Per class",
        "",
    ]
    class_rows = []
    for name in classes:
        m = result.per_class[name]
        class_rows.append(
            [
                name,
                _fmt_ci(m.precision, m.precision_ci),
                _fmt_ci(m.recall, m.recall_ci),
                _fmt_ci(m.f1, m.f1_ci),
                m.support,
                _fmt(m.roc_auc),
            ]
        )
    lines += _table(["class", "precision", "recall", "F1", "support", "ROC-AUC"], class_rows)

    cm = result.confusion_matrix
    if cm is not None:
        lines += ["", "## Confusion matrix", "", "Rows: true class; columns: predicted class.", ""]
        lines += _table(
            ["true \\ predicted", *cm.labels], [[label, *row] for label, row in cm.rows()]
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
        f"ECE: {_fmt(result.ece)}.",
        "",
        f"![Reliability diagram]({paths['calibration'].name})",
        "",
    ]

    if result.per_source:
        lines += ["## Per source", ""]
        rows = [
            [
                source,
                sub.n,
                _fmt(sub.accuracy),
                _fmt(sub.macro_f1_present),
                *(
                    _fmt(sub.per_class[name].recall) if sub.per_class[name].support else "n/a"
                    for name in classes
                ),
            ]
            for source, sub in result.per_source.items()
        ]
        header = [
            "source",
            "n",
            "accuracy",
            "macro-F1 (classes present)",
            *(f"recall {c}" for c in classes),
        ]
        lines += [*_table(header, rows), ""]
    if result.shortcuts is not None:
        lines += _shortcut_markdown(result.shortcuts)
    return "\n".join(lines)


def _shortcut_markdown(shortcuts: ShortcutMetrics) -> list[str]:
    """The shortcut tests: each figure with its interval, its target, and whether it is met."""
    verdict = {True: "yes", False: "**no**", None: "n/a"}
    rows = [
        [
            check.label,
            "not measured" if check.value is None else _fmt_ci(check.value, check.ci),
            check.target or "(reference)",
            verdict[check.met] if check.target else "",
            check.note,
        ]
        for check in shortcuts.checks()
    ]
    return [
        "## Shortcut tests",
        "",
        "Does the model read the lungs, or where the image came from? Within-source ROC-AUC "
        "needs the disease, not the hospital; with the lung fields filled with the image's "
        "mean accuracy should fall towards chance; Grad-CAM mass (predicted class) should "
        f"lie in the lungs. {shortcuts.n} images.",
        "",
        *_table(["test", "value [95% CI]", "target", "met", "note"], rows),
        "",
    ]


# --- figures (drawn from the result alone) ---------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, no global state, no display needed."""
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _titled(title: str, what: str) -> str:
    return f"{title}: {what}" if title else what


def _relative_luminance(rgba: Sequence[float]) -> float:
    """WCAG 2 relative luminance of an sRGB colour with channels in [0, 1]."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _require_curves(result: EvaluationResult) -> Mapping[str, Any]:
    curves = result.curves
    if curves is None:
        raise ValueError(
            "This result has no curves (metrics computed before curves were stored); "
            "evaluate the model again to draw ROC and calibration plots."
        )
    return curves


def figure_confusion_matrix(result: EvaluationResult, title: str = "") -> Figure:
    """The confusion matrix of an :func:`evaluate_predictions` result, counts in every cell.

    Sequential blues (light = few): each count is printed in black or white,
    whichever contrasts more with its cell. Raises ``ValueError`` when the result has
    no confusion matrix (metrics stored from an old model card's summary).
    """
    cm = result.confusion_matrix
    if cm is None:
        raise ValueError("This result has no confusion matrix; evaluate the model again.")
    matrix = np.asarray(cm.matrix, dtype=np.int64).reshape(len(cm.labels), len(cm.labels))
    labels = list(cm.labels)
    size = 1.2 + 1.1 * len(labels)
    figure = _new_figure(size + 1.2, size)
    ax = figure.add_subplot()
    vmax = max(int(matrix.max()) if matrix.size else 0, 1)
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
    figure.colorbar(image, ax=ax, label="images")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(_titled(title, "confusion matrix"))
    cmap = image.get_cmap()
    for (row, col), value in np.ndenumerate(matrix):
        luminance = _relative_luminance(cmap(value / vmax))
        ax.text(
            col,
            row,
            str(value),
            ha="center",
            va="center",
            # WCAG contrast: black wins when (L + 0.05) / 0.05 > 1.05 / (L + 0.05).
            color="black" if luminance > 0.179 else "white",
            fontsize=11,
        )
    return figure


def figure_roc(result: EvaluationResult, title: str = "") -> Figure:
    """One-vs-rest ROC curves from ``result.curves["roc"]``, AUC in the legend.

    Raises ``ValueError`` when the result has no ``curves`` (metrics stored before
    they were added). Classes whose ROC is undefined are absent from the curves
    and from the plot. Colours (Okabe-Ito) are doubled by line styles and markers,
    so the curves stay distinguishable in grey scale too.
    """
    roc = _require_curves(result).get("roc", {})
    figure = _new_figure(6, 6)
    ax = figure.add_subplot()
    for i, (name, curve) in enumerate(roc.items()):
        ax.plot(
            curve["fpr"],
            curve["tpr"],
            color=OKABE_ITO[i % len(OKABE_ITO)],
            linestyle=_LINE_STYLES[i % len(_LINE_STYLES)],
            marker=_MARKERS[i % len(_MARKERS)],
            markevery=max(1, len(curve["fpr"]) // 12),
            markersize=4,
            linewidth=2,
            label=f"{name} (AUC {curve['auc']:.3f})",
        )
    ax.plot([0, 1], [0, 1], linestyle=":", color=_CHANCE_COLOUR, linewidth=1.2, label="chance")
    if not roc:
        ax.text(0.5, 0.6, "no class has a defined ROC curve", ha="center", color=_CHANCE_COLOUR)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(_titled(title, "ROC (one-vs-rest)"))
    ax.grid(color="#dddddd", linewidth=0.6)
    ax.legend(loc="lower right")
    return figure


def figure_calibration(result: EvaluationResult, title: str = "") -> Figure:
    """Reliability diagram (accuracy vs mean confidence per bin) over a confidence histogram.

    Drawn from ``result.curves["calibration"]`` and ``["confidence_histogram"]``;
    raises ``ValueError`` when the result has no ``curves``.
    """
    curves = _require_curves(result)
    calibration = curves["calibration"]
    histogram = curves["confidence_histogram"]
    figure = _new_figure(6, 7)
    ax, hist_ax = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot(
        [0, 1],
        [0, 1],
        linestyle=":",
        color=_CHANCE_COLOUR,
        linewidth=1.2,
        label="perfectly calibrated",
    )
    ax.plot(
        calibration["mean_confidence"],
        calibration["accuracy"],
        color=OKABE_ITO[0],
        marker="o",
        linewidth=2,
        label=f"top-1 ({calibration['bins']} equal-width bins)",
    )
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy (fraction correct)")
    ax.set_title(_titled(title, f"reliability diagram, ECE {_fmt(result.ece)}"))
    ax.grid(color="#dddddd", linewidth=0.6)
    ax.legend(loc="upper left")
    edges = np.asarray(histogram["edges"], dtype=np.float64)
    hist_ax.bar(
        edges[:-1],
        histogram["counts"],
        width=np.diff(edges),
        align="edge",
        color=OKABE_ITO[5],
        edgecolor=OKABE_ITO[0],
        linewidth=0.6,
    )
    hist_ax.set_xlim(0, 1)
    hist_ax.set_xlabel("top-1 confidence")
    hist_ax.set_ylabel("images")
    return figure


def figure_bytes(fig: Figure, fmt: str = "svg", *, dpi: int = 120) -> bytes:
    """The figure encoded as ``fmt`` (``"svg"``, ``"png"``, ``"pdf"``), for a response or file.

    SVG output carries no creation date (metadata that would only make copies differ).
    """
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else None
    fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return buffer.getvalue()

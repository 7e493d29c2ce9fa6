"""A classifier's operating point as the version page shows it: what the card chose on
validation, what the version serves at now, the curve rows a model admin may choose from,
and the plot of them on the validation ROC (normal against abnormal).

Reads ``version.card["operating_point"]`` (``ml.models.operating_point`` writes it) and
``version.operating_point`` (a model admin's choice, ``services.set_operating_point``).
Older cards (method ``val-macro-f1``, no targets, no curve) show what they have.
No TensorFlow; matplotlib only when a plot is drawn.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from apps.models.models import ModelVersion
from apps.models.services import OperatingPointError, RegistryError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHODS = {
    "val-specificity": "specificity targets first, then the best macro-F1",
    "val-macro-f1": "the best macro-F1",
}
FIGURES = {
    "normal_specificity": "normals called normal",
    "abnormal_sensitivity": "abnormal images called abnormal",
    "covid19_sensitivity": "COVID-19 called COVID-19",
    "covid19_specificity": "non-COVID-19 kept out of COVID-19",
    "macro_f1": "macro-F1",
}
ROW_COLUMNS = (
    "normal_specificity",
    "abnormal_sensitivity",
    "covid19_sensitivity",
    "covid19_specificity",
    "macro_f1",
)


def _number(value: Any) -> float | None:
    """A figure as a float, None when absent or not a number (NaN: no such images)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _ordered(offsets: dict[str, Any] | None, classes: list[str]) -> list[tuple[str, float]]:
    """Offsets in the card's class order (a jsonb column does not keep key order)."""
    if not offsets:
        return []
    order = [c for c in classes if c in offsets] + sorted(set(offsets) - set(classes))
    return [(c, float(offsets[c])) for c in order]


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if not a or not b or set(a) != set(b):
        return False
    return all(abs(float(a[k]) - float(b[k])) <= 1e-6 for k in a)


def curve_rows(version: ModelVersion) -> list[dict[str, Any]]:
    """The rows of the version's operating curve, each with its index, its offsets in
    class order, its figures (None where unmeasured), and whether it is the card's point
    and the one the version serves at now. Empty without a curve."""
    curve = version.operating_curve
    if curve is None:
        return []
    classes, active = version.classes, version.active_offsets
    rows = []
    for index, row in enumerate(curve["rows"]):
        offsets = row.get("offsets") or {}
        rows.append(
            {
                "index": index,
                "offsets": _ordered(offsets, classes),
                "normal_offset": _number(offsets.get("normal")),
                "figures": [_number(row.get(k)) for k in ROW_COLUMNS],
                **{k: _number(row.get(k)) for k in ROW_COLUMNS},
                "card": bool(row.get("chosen")),
                "active": _same(offsets, active),
            }
        )
    return rows


def summary(version: ModelVersion) -> dict[str, Any] | None:
    """What the version page's operating-point section shows; None when the card has no
    operating point (a model served at its argmax, or a CT segmenter)."""
    point = version.card_point if version.is_classifier else None
    if point is None:
        return None
    classes = version.classes
    method = str(point.get("method") or "val-macro-f1")
    curve = version.operating_curve
    rows = curve_rows(version)
    reached = point.get("reached") or {}
    targets = point.get("targets") or {}
    return {
        "method": method,
        "method_text": METHODS.get(method, method),
        "card_offsets": _ordered(point.get("offsets"), classes),
        "active_offsets": _ordered(version.active_offsets, classes),
        "chosen": version.operating_point,
        "targets": [(FIGURES.get(k, k), k, _number(v)) for k, v in targets.items()],
        "reached": [
            (FIGURES.get(k, k), k, _number(reached[k])) for k in ROW_COLUMNS if k in reached
        ],
        "macro_f1_before": _number(point.get("val_macro_f1_before")),
        "macro_f1_after": _number(point.get("val_macro_f1_after")),
        "curve": curve,
        "rows": rows,
        "columns": [FIGURES[k] for k in ROW_COLUMNS],
        "auroc": _number((curve or {}).get("roc", {}).get("auroc")),
        "n": (curve or {}).get("n"),
        "n_normal": (curve or {}).get("n_normal"),
    }


def row_offsets(version: ModelVersion, index: Any) -> dict[str, float]:
    """The offsets of row ``index`` (a form's value) of the version's curve, or
    :class:`OperatingPointError` (RegistryError without a curve)."""
    curve = version.operating_curve if version.is_classifier else None
    if curve is None:
        raise RegistryError(
            f"#{version.pk} {version.name} has no operating curve on its model card: "
            "its operating point cannot be changed."
        )
    try:
        position = int(str(index))
    except ValueError:
        raise OperatingPointError("Choose one of the rows of the operating curve.") from None
    if not 0 <= position < len(curve["rows"]):
        raise OperatingPointError(
            f"There is no row {position}: the curve has {len(curve['rows'])} rows."
        )
    return {str(k): float(v) for k, v in (curve["rows"][position].get("offsets") or {}).items()}


def figure(version: ModelVersion, title: str = "") -> Figure:
    """The validation ROC of p(abnormal) = 1 - p(normal), every curve row as a point at
    (1 - normals called normal, abnormal called abnormal), the card's point and, where a
    model admin chose another, the one it serves at, highlighted.

    ValueError when the card has no curve. Colours (Okabe-Ito) are doubled by marker
    shapes, so the points stay distinguishable in grey scale.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ml.models.evaluation import OKABE_ITO

    curve = version.operating_curve
    if curve is None:
        raise ValueError("the model card has no operating curve")
    figure = Figure(figsize=(6, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    roc = curve.get("roc") or {}
    if roc.get("fpr") and roc.get("tpr"):
        auroc = _number(roc.get("auroc"))
        ax.plot(
            roc["fpr"],
            roc["tpr"],
            color=OKABE_ITO[0],
            linewidth=2,
            label="ROC of p(abnormal)" + (f" (AUROC {auroc:.3f})" if auroc is not None else ""),
        )
    ax.plot([0, 1], [0, 1], linestyle=":", color="#555555", linewidth=1.2, label="chance")

    def where(row: dict[str, Any]) -> tuple[float, float] | None:
        spec, sens = row["normal_specificity"], row["abnormal_sensitivity"]
        return None if spec is None or sens is None else (1.0 - spec, sens)

    rows = curve_rows(version)
    points = [p for p in (where(r) for r in rows) if p is not None]
    if points:
        ax.scatter(
            [p[0] for p in points],
            [p[1] for p in points],
            s=22,
            marker="o",
            facecolors="none",
            edgecolors="#555555",
            label="curve rows (normal offset varied)",
            zorder=3,
        )
    card = next((where(r) for r in rows if r["card"]), None)
    if card is not None:
        ax.scatter(*card, s=220, marker="*", color=OKABE_ITO[1], label="card's point", zorder=4)
    active = next((r for r in rows if r["active"]), None)
    if version.operating_point and active is not None and not active["card"]:
        spot = where(active)
        if spot is not None:
            ax.scatter(
                *spot,
                s=90,
                marker="D",
                color=OKABE_ITO[2],
                edgecolors="black",
                label="serving now (chosen by a model admin)",
                zorder=5,
            )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("normals called abnormal (1 - specificity)")
    ax.set_ylabel("abnormal images called abnormal (sensitivity)")
    n, n_normal = curve.get("n", "?"), curve.get("n_normal", "?")
    what = f"operating point on validation (n={n}, normal {n_normal})"
    ax.set_title(f"{title}: {what}" if title else what, fontsize=10)
    ax.grid(color="#dddddd", linewidth=0.6)
    ax.legend(loc="lower right", fontsize=8)
    return figure

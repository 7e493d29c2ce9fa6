"""What an evaluation returns and what a model card stores: typed, with ``to_json``/``from_json``.

Why one typed contract: the same figures travel from :mod:`ml.models.evaluation` to
``metrics.json``, the model card, the registry's database row, its pages and the
promotion gate. Before, each hop renamed keys (``macro_f1`` -> ``test_macro_f1`` ->
``macro_f1``); now every reader gets an :class:`EvaluationResult` and reads fields.

The JSON shape is the one ``evaluate_predictions`` has always written (``n``,
``accuracy``, ``macro_f1``, ``per_class``, ...), plus ``shortcuts``, so stored rows and
reports keep their meaning. :meth:`EvaluationResult.from_json` also reads the old model
card summary (``test_macro_f1``, ``test_per_class``, ...), and rows stored from it, which
lack the confusion matrix and curves.

Framework code: NumPy is not even needed here, and neither Django nor TensorFlow is
imported, so the web process can read a version's metrics cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

Interval = tuple[float, float]

# Targets of the shortcut tests: what the product asks of a model that
# looks at the lungs rather than at where an image came from.
TARGET_WITHIN_SOURCE_AUROC = 0.80
TARGET_LUNGS_BLANKED_ACCURACY = 0.45
TARGET_MASS_IN_LUNGS = 0.70
# Normals of an adult site the model never saw, called normal.
TARGET_HELD_OUT_NORMALS = 0.80

# The old card summary stored these keys with a ``test_`` prefix.
_OLD_CARD_PREFIX = "test_"


class MetricsFormatError(ValueError):
    """Stored metrics that cannot be read as an evaluation (missing or mistyped field)."""


# --- small readers ------------------------------------------------------------------------


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MetricsFormatError(f"{what} must be a number, got {value!r}")
    return float(value)


def _opt_float(value: Any, what: str) -> float | None:
    return None if value is None else _float(value, what)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise MetricsFormatError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _opt_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _interval(value: Any, what: str) -> Interval | None:
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise MetricsFormatError(f"{what} must be [low, high] or null, got {value!r}")
    return (_float(value[0], what), _float(value[1], what))


def _required(data: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in data:
        raise MetricsFormatError(f"{what} lacks {key!r}")
    return data[key]


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MetricsFormatError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _json_interval(ci: Interval | None) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


# --- parts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapInfo:
    """How the intervals were made: resamples, seed, method (percentile, images resampled)."""

    n: int
    seed: int
    method: str

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "method": self.method}

    @classmethod
    def from_json(cls, data: Any) -> BootstrapInfo | None:
        if data is None:
            return None
        data = _mapping(data, "bootstrap")
        return cls(
            n=_int(data.get("n", 0), "bootstrap.n"),
            seed=_int(data.get("seed", 0), "bootstrap.seed"),
            method=str(data.get("method", "")),
        )


@dataclass(frozen=True)
class ClassMetrics:
    """One class, one-vs-rest: precision, recall, F1 (with 95% intervals), support, ROC-AUC."""

    precision: float
    recall: float
    f1: float
    support: int
    roc_auc: float | None = None
    precision_ci: Interval | None = None
    recall_ci: Interval | None = None
    f1_ci: Interval | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
            "precision_ci": _json_interval(self.precision_ci),
            "recall_ci": _json_interval(self.recall_ci),
            "f1_ci": _json_interval(self.f1_ci),
            "roc_auc": self.roc_auc,
        }

    @classmethod
    def from_json(cls, data: Any, name: str = "class") -> ClassMetrics:
        what = f"per_class[{name!r}]"
        data = _mapping(data, what)
        return cls(
            precision=_float(_required(data, "precision", what), f"{what}.precision"),
            recall=_float(_required(data, "recall", what), f"{what}.recall"),
            f1=_float(_required(data, "f1", what), f"{what}.f1"),
            support=_int(_required(data, "support", what), f"{what}.support"),
            roc_auc=_opt_float(data.get("roc_auc"), f"{what}.roc_auc"),
            precision_ci=_interval(data.get("precision_ci"), f"{what}.precision_ci"),
            recall_ci=_interval(data.get("recall_ci"), f"{what}.recall_ci"),
            f1_ci=_interval(data.get("f1_ci"), f"{what}.f1_ci"),
        )


def _per_class_from_json(data: Any) -> dict[str, ClassMetrics]:
    if data is None:
        return {}
    return {
        str(name): ClassMetrics.from_json(row, str(name))
        for name, row in _mapping(data, "per_class").items()
    }


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts: ``matrix[i][j]`` images of true class ``labels[i]`` predicted as ``labels[j]``."""

    labels: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        size = len(self.labels)
        if len(self.matrix) != size or any(len(row) != size for row in self.matrix):
            raise MetricsFormatError(
                f"confusion matrix is not {size} x {size} for labels {list(self.labels)}"
            )

    def rows(self) -> list[tuple[str, tuple[int, ...]]]:
        """(true label, counts) per row, for tables."""
        return list(zip(self.labels, self.matrix, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "matrix": [list(row) for row in self.matrix]}

    @classmethod
    def from_json(cls, data: Any) -> ConfusionMatrix | None:
        if data is None:
            return None
        data = _mapping(data, "confusion_matrix")
        labels = tuple(str(v) for v in _required(data, "labels", "confusion_matrix"))
        matrix = tuple(
            tuple(_int(v, "confusion_matrix.matrix") for v in row)
            for row in _required(data, "matrix", "confusion_matrix")
        )
        return cls(labels=labels, matrix=matrix)


@dataclass(frozen=True)
class SourceMetrics:
    """The evaluation restricted to one data source's images (no curves, no sub-sources).

    ``macro_f1_present`` averages F1 over the classes this source has images of
    (``classes_present``): the paediatric set has no COVID-19, and zeros for absent
    classes would mean nothing.
    """

    n: int
    accuracy: float
    macro_f1: float
    per_class: Mapping[str, ClassMetrics]
    classes_present: tuple[str, ...]
    macro_f1_present: float | None
    macro_f1_ci: Interval | None = None
    confusion_matrix: ConfusionMatrix | None = None
    roc_auc_macro: float | None = None
    ece: float | None = None
    bootstrap: BootstrapInfo | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "macro_f1_ci": _json_interval(self.macro_f1_ci),
            "per_class": {name: row.to_json() for name, row in self.per_class.items()},
            "confusion_matrix": (
                self.confusion_matrix.to_json() if self.confusion_matrix else None
            ),
            "roc_auc_macro": self.roc_auc_macro,
            "ece": self.ece,
            "bootstrap": self.bootstrap.to_json() if self.bootstrap else None,
            "classes_present": list(self.classes_present),
            "macro_f1_present": self.macro_f1_present,
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "source") -> SourceMetrics:
        what = f"per_source[{source!r}]"
        data = _mapping(data, what)
        per_class = _per_class_from_json(data.get("per_class"))
        present = data.get("classes_present")
        if present is None:
            present = [name for name, row in per_class.items() if row.support > 0]
        return cls(
            n=_int(_required(data, "n", what), f"{what}.n"),
            accuracy=_float(_required(data, "accuracy", what), f"{what}.accuracy"),
            macro_f1=_float(_required(data, "macro_f1", what), f"{what}.macro_f1"),
            per_class=per_class,
            classes_present=tuple(str(name) for name in present),
            macro_f1_present=_opt_float(data.get("macro_f1_present"), f"{what}.macro_f1_present"),
            macro_f1_ci=_interval(data.get("macro_f1_ci"), f"{what}.macro_f1_ci"),
            confusion_matrix=ConfusionMatrix.from_json(data.get("confusion_matrix")),
            roc_auc_macro=_opt_float(data.get("roc_auc_macro"), f"{what}.roc_auc_macro"),
            ece=_opt_float(data.get("ece"), f"{what}.ece"),
            bootstrap=BootstrapInfo.from_json(data.get("bootstrap")),
        )


# --- shortcut tests ------------------------------------------------------------------------


@dataclass(frozen=True)
class WithinSourceAuroc:
    """ROC-AUC of one class's probability among the images of one source.

    Why within one source: across sources a model can separate classes by the hospital
    (each source holds mostly one class); within one source it has to see the disease.
    ``auroc`` is None when the source lacks images of either side.
    """

    source: str
    positive: str  # the class scored, e.g. "pneumonia"
    negative: str  # what it is told apart from: a class name, or "rest"
    auroc: float | None
    ci: Interval | None
    n_positive: int
    n_negative: int

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "positive": self.positive,
            "negative": self.negative,
            "auroc": self.auroc,
            "ci": _json_interval(self.ci),
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
        }

    @classmethod
    def from_json(cls, data: Any, what: str = "within_source") -> WithinSourceAuroc | None:
        if data is None:
            return None
        data = _mapping(data, what)
        return cls(
            source=str(_required(data, "source", what)),
            positive=str(_required(data, "positive", what)),
            negative=str(_required(data, "negative", what)),
            auroc=_opt_float(data.get("auroc"), f"{what}.auroc"),
            ci=_interval(data.get("ci"), f"{what}.ci"),
            n_positive=_int(data.get("n_positive", 0), f"{what}.n_positive"),
            n_negative=_int(data.get("n_negative", 0), f"{what}.n_negative"),
        )


@dataclass(frozen=True)
class MassInLungs:
    """Mean share of Grad-CAM mass inside the lung mask over one source's images.

    ``n`` images had a map with some positive mass; ``n_empty`` had none (Grad-CAM all
    zero after its ReLU) and are left out of the mean, where the share is undefined.
    """

    mean: float | None
    ci: Interval | None
    n: int
    n_empty: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "ci": _json_interval(self.ci),
            "n": self.n,
            "n_empty": self.n_empty,
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "source") -> MassInLungs:
        what = f"gradcam_mass_in_lungs[{source!r}]"
        if isinstance(data, int | float) and not isinstance(data, bool):
            return cls(mean=float(data), ci=None, n=0)  # a bare mean
        data = _mapping(data, what)
        return cls(
            mean=_opt_float(data.get("mean"), f"{what}.mean"),
            ci=_interval(data.get("ci"), f"{what}.ci"),
            n=_int(data.get("n", 0), f"{what}.n"),
            n_empty=_int(data.get("n_empty", 0), f"{what}.n_empty"),
        )


@dataclass(frozen=True)
class HeldOutNormals:
    """Normals of one source called normal by a model trained *without* that source's
    normals (same data, settings and operating-point rule otherwise): how the model
    treats normal films from a site it never saw. Measured at training time (a model of
    its own per source); ``ci`` is the Wilson 95% interval of the share."""

    source: str
    n: int
    called_normal: int
    ci: Interval | None
    called: Mapping[str, int] = field(default_factory=dict)  # class -> images

    @property
    def share(self) -> float | None:
        return self.called_normal / self.n if self.n else None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n": self.n,
            "called_normal": self.called_normal,
            "share": self.share,
            "ci": _json_interval(self.ci),
            "called": dict(self.called),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "source") -> HeldOutNormals:
        what = f"held_out_normals[{source!r}]"
        data = _mapping(data, what)
        called = _mapping(data.get("called") or {}, f"{what}.called")
        return cls(
            source=str(data.get("source", source)),
            n=_int(data.get("n", 0), f"{what}.n"),
            called_normal=_int(data.get("called_normal", 0), f"{what}.called_normal"),
            ci=_interval(data.get("ci"), f"{what}.ci"),
            called={str(k): _int(v, f"{what}.called") for k, v in called.items()},
        )


@dataclass(frozen=True)
class SourceProbe:
    """How well a linear classifier tells the source of an image from the model's pooled
    features (cross-validated, grouped by patient), against chance (the largest source's
    share). ``among``: which images ("all", or "normal": only normals, where the class
    cannot explain the source)."""

    among: str
    accuracy: float | None
    ci: Interval | None
    chance: float | None
    n: int
    sources: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "among": self.among,
            "accuracy": self.accuracy,
            "ci": _json_interval(self.ci),
            "chance": self.chance,
            "n": self.n,
            "sources": list(self.sources),
        }

    @classmethod
    def from_json(cls, data: Any, among: str = "all") -> SourceProbe:
        what = f"source_probe[{among!r}]"
        data = _mapping(data, what)
        return cls(
            among=str(data.get("among", among)),
            accuracy=_opt_float(data.get("accuracy"), f"{what}.accuracy"),
            ci=_interval(data.get("ci"), f"{what}.ci"),
            chance=_opt_float(data.get("chance"), f"{what}.chance"),
            n=_int(data.get("n", 0), f"{what}.n"),
            sources=tuple(str(v) for v in data.get("sources") or ()),
        )


@dataclass(frozen=True)
class ShortcutCheck:
    """One row of the shortcut table: a figure, its interval, its target, and the verdict.

    ``met`` is None where there is no target or nothing was measured (``value`` None).
    """

    key: str
    label: str
    value: float | None
    ci: Interval | None
    target: str  # e.g. ">= 0.80"; "" when the figure is only for reference
    met: bool | None
    note: str = ""

    def __str__(self) -> str:
        """One line for a terminal: ``label: value [low, high] (target >= 0.80: met)``."""
        if self.value is None:
            text = f"{self.label}: not measured"
        else:
            text = f"{self.label}: {self.value:.3f}"
            if self.ci is not None:
                text += f" [{self.ci[0]:.3f}, {self.ci[1]:.3f}]"
        if self.target:
            verdict = {True: "met", False: "NOT met", None: "n/a"}[self.met]
            text += f" (target {self.target}: {verdict})"
        return f"{text}; {self.note}" if self.note else text


def _check(
    key: str,
    label: str,
    value: float | None,
    ci: Interval | None,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    note: str = "",
) -> ShortcutCheck:
    if at_least is not None:
        target = f">= {at_least:.2f}"
        met = None if value is None else value >= at_least
    elif at_most is not None:
        target = f"<= {at_most:.2f}"
        met = None if value is None else value <= at_most
    else:
        target, met = "", None
    return ShortcutCheck(key, label, value, ci, target, met, note)


@dataclass(frozen=True)
class ShortcutMetrics:
    """Does the model read the lungs, or where the image came from?

    * ``nih_pneumonia_auroc``: pneumonia vs normal among the NIH ChestX-ray14 images;
      ``covid_chestxray_covid19_auroc``: COVID-19 vs the rest among covid-chestxray's.
    * ``lungs_blanked_*``: the test images with the lung fields filled with the image's
      mean; a model that reads the lungs falls towards ``chance_accuracy`` (the share of
      the largest class). ``lungs_only_*``: everything outside the lungs filled instead.
    * ``gradcam_mass_in_lungs``: per source, the mean share of Grad-CAM mass (predicted
      class) inside the lung mask.

    Every figure is None (or the mapping empty) where it was not measured.
    """

    n: int
    nih_pneumonia_auroc: WithinSourceAuroc | None = None
    covid_chestxray_covid19_auroc: WithinSourceAuroc | None = None
    lungs_blanked_accuracy: float | None = None
    lungs_blanked_accuracy_ci: Interval | None = None
    lungs_blanked_macro_f1: float | None = None
    lungs_blanked_macro_f1_ci: Interval | None = None
    lungs_only_accuracy: float | None = None
    lungs_only_accuracy_ci: Interval | None = None
    lungs_only_macro_f1: float | None = None
    lungs_only_macro_f1_ci: Interval | None = None
    chance_accuracy: float | None = None
    gradcam_mass_in_lungs: Mapping[str, MassInLungs] = field(default_factory=dict)
    bootstrap: BootstrapInfo | None = None
    # How the training recipe treats a site it never saw (from the card), and
    # how much of the source the model's features still carry.
    held_out_normals: Mapping[str, HeldOutNormals] = field(default_factory=dict)
    source_probe: Mapping[str, SourceProbe] = field(default_factory=dict)

    @property
    def min_mass_in_lungs(self) -> float | None:
        """The lowest per-source mean mass in the lungs (what the gate compares)."""
        means = [m.mean for m in self.gradcam_mass_in_lungs.values() if m.mean is not None]
        return min(means) if means else None

    def checks(self) -> list[ShortcutCheck]:
        """The table every view shows: figure, interval, target, met or not."""
        chance = (
            f"chance (largest class) {self.chance_accuracy:.3f}"
            if self.chance_accuracy is not None
            else ""
        )
        rows = []
        for key, label, auroc in (
            (
                "nih_pneumonia_auroc",
                "NIH: pneumonia vs normal, ROC-AUC",
                self.nih_pneumonia_auroc,
            ),
            (
                "covid_chestxray_covid19_auroc",
                "covid-chestxray: COVID-19 vs rest, ROC-AUC",
                self.covid_chestxray_covid19_auroc,
            ),
        ):
            note = ""
            if auroc is not None:
                note = f"{auroc.n_positive} {auroc.positive} vs {auroc.n_negative} {auroc.negative}"
            rows.append(
                _check(
                    key,
                    label,
                    auroc.auroc if auroc else None,
                    auroc.ci if auroc else None,
                    at_least=TARGET_WITHIN_SOURCE_AUROC,
                    note=note,
                )
            )
        rows += [
            _check(
                "lungs_blanked_accuracy",
                "Lungs blanked: accuracy",
                self.lungs_blanked_accuracy,
                self.lungs_blanked_accuracy_ci,
                at_most=TARGET_LUNGS_BLANKED_ACCURACY,
                note=chance,
            ),
            _check(
                "lungs_blanked_macro_f1",
                "Lungs blanked: macro-F1",
                self.lungs_blanked_macro_f1,
                self.lungs_blanked_macro_f1_ci,
            ),
            _check(
                "lungs_only_accuracy",
                "Lungs only (rest blanked): accuracy",
                self.lungs_only_accuracy,
                self.lungs_only_accuracy_ci,
            ),
            _check(
                "lungs_only_macro_f1",
                "Lungs only (rest blanked): macro-F1",
                self.lungs_only_macro_f1,
                self.lungs_only_macro_f1_ci,
            ),
        ]
        for source, mass in sorted(self.gradcam_mass_in_lungs.items()):
            note = f"{mass.n} images" + (
                f", {mass.n_empty} left out (empty map)" if mass.n_empty else ""
            )
            rows.append(
                _check(
                    f"mass_in_lungs:{source}",
                    f"Grad-CAM mass in the lungs: {source}",
                    mass.mean,
                    mass.ci,
                    at_least=TARGET_MASS_IN_LUNGS,
                    note=note,
                )
            )
        for source, held in sorted(self.held_out_normals.items()):
            others = ", ".join(f"{n} {c}" for c, n in sorted(held.called.items()) if c != "normal")
            rows.append(
                _check(
                    f"held_out_normals:{source}",
                    f"Normals of {source} called normal, trained without them",
                    held.share,
                    held.ci,
                    at_least=TARGET_HELD_OUT_NORMALS,
                    note=f"{held.called_normal} of {held.n}"
                    + (f"; others: {others}" if others else ""),
                )
            )
        for among, probe in sorted(self.source_probe.items()):
            rows.append(
                _check(
                    f"source_probe:{among}",
                    f"Source probe on pooled features ({among} images): accuracy",
                    probe.accuracy,
                    probe.ci,
                    note=(
                        f"chance {probe.chance:.3f}; {probe.n} images, {len(probe.sources)} sources"
                        if probe.chance is not None
                        else ""
                    ),
                )
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "nih_pneumonia_auroc": (
                self.nih_pneumonia_auroc.to_json() if self.nih_pneumonia_auroc else None
            ),
            "covid_chestxray_covid19_auroc": (
                self.covid_chestxray_covid19_auroc.to_json()
                if self.covid_chestxray_covid19_auroc
                else None
            ),
            "lungs_blanked_accuracy": self.lungs_blanked_accuracy,
            "lungs_blanked_accuracy_ci": _json_interval(self.lungs_blanked_accuracy_ci),
            "lungs_blanked_macro_f1": self.lungs_blanked_macro_f1,
            "lungs_blanked_macro_f1_ci": _json_interval(self.lungs_blanked_macro_f1_ci),
            "lungs_only_accuracy": self.lungs_only_accuracy,
            "lungs_only_accuracy_ci": _json_interval(self.lungs_only_accuracy_ci),
            "lungs_only_macro_f1": self.lungs_only_macro_f1,
            "lungs_only_macro_f1_ci": _json_interval(self.lungs_only_macro_f1_ci),
            "chance_accuracy": self.chance_accuracy,
            "gradcam_mass_in_lungs": {
                source: mass.to_json() for source, mass in self.gradcam_mass_in_lungs.items()
            },
            "bootstrap": self.bootstrap.to_json() if self.bootstrap else None,
            "held_out_normals": {
                source: held.to_json() for source, held in self.held_out_normals.items()
            },
            "source_probe": {among: probe.to_json() for among, probe in self.source_probe.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> ShortcutMetrics | None:
        if data is None:
            return None
        data = _mapping(data, "shortcuts")

        def opt_float(key: str) -> float | None:
            return _opt_float(data.get(key), f"shortcuts.{key}")

        def interval(key: str) -> Interval | None:
            return _interval(data.get(key), f"shortcuts.{key}")

        mass = _mapping(data.get("gradcam_mass_in_lungs") or {}, "gradcam_mass_in_lungs")
        return cls(
            n=_int(data.get("n", 0), "shortcuts.n"),
            nih_pneumonia_auroc=WithinSourceAuroc.from_json(
                data.get("nih_pneumonia_auroc"), "shortcuts.nih_pneumonia_auroc"
            ),
            covid_chestxray_covid19_auroc=WithinSourceAuroc.from_json(
                data.get("covid_chestxray_covid19_auroc"),
                "shortcuts.covid_chestxray_covid19_auroc",
            ),
            lungs_blanked_accuracy=opt_float("lungs_blanked_accuracy"),
            lungs_blanked_accuracy_ci=interval("lungs_blanked_accuracy_ci"),
            lungs_blanked_macro_f1=opt_float("lungs_blanked_macro_f1"),
            lungs_blanked_macro_f1_ci=interval("lungs_blanked_macro_f1_ci"),
            lungs_only_accuracy=opt_float("lungs_only_accuracy"),
            lungs_only_accuracy_ci=interval("lungs_only_accuracy_ci"),
            lungs_only_macro_f1=opt_float("lungs_only_macro_f1"),
            lungs_only_macro_f1_ci=interval("lungs_only_macro_f1_ci"),
            chance_accuracy=opt_float("chance_accuracy"),
            gradcam_mass_in_lungs={
                str(source): MassInLungs.from_json(value, str(source))
                for source, value in mass.items()
            },
            bootstrap=BootstrapInfo.from_json(data.get("bootstrap")),
            held_out_normals={
                str(source): HeldOutNormals.from_json(value, str(source))
                for source, value in _mapping(
                    data.get("held_out_normals") or {}, "held_out_normals"
                ).items()
            },
            source_probe={
                str(among): SourceProbe.from_json(value, str(among))
                for among, value in _mapping(data.get("source_probe") or {}, "source_probe").items()
            },
        )


# --- the whole evaluation ------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationResult:
    """One evaluation of a classifier on labelled images (see ``evaluate_predictions``).

    Only ``macro_f1`` is always there: rows stored from old model cards lack the
    confusion matrix, the curves, sometimes ``n``. ``curves`` holds the ROC curves,
    reliability bins and confidence histogram in the shape ``ml.models.evaluation.curves``
    documents; the figures are drawn from it.
    """

    macro_f1: float
    n: int | None = None
    accuracy: float | None = None
    macro_f1_ci: Interval | None = None
    per_class: Mapping[str, ClassMetrics] = field(default_factory=dict)
    confusion_matrix: ConfusionMatrix | None = None
    roc_auc_macro: float | None = None
    ece: float | None = None
    bootstrap: BootstrapInfo | None = None
    per_source: Mapping[str, SourceMetrics] = field(default_factory=dict)
    curves: Mapping[str, Any] | None = None
    shortcuts: ShortcutMetrics | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON types only (None for undefined values), the keys ``metrics.json`` has."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "macro_f1_ci": _json_interval(self.macro_f1_ci),
            "per_class": {name: row.to_json() for name, row in self.per_class.items()},
            "confusion_matrix": (
                self.confusion_matrix.to_json() if self.confusion_matrix else None
            ),
            "roc_auc_macro": self.roc_auc_macro,
            "ece": self.ece,
            "bootstrap": self.bootstrap.to_json() if self.bootstrap else None,
            "per_source": {source: sub.to_json() for source, sub in self.per_source.items()},
            "curves": dict(self.curves) if self.curves is not None else None,
            "shortcuts": self.shortcuts.to_json() if self.shortcuts else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> EvaluationResult:
        """Read what :meth:`to_json` wrote, an older ``metrics.json`` or database row, or
        the old model card summary (``test_macro_f1``, ``test_per_class``, ...).

        Raises :class:`MetricsFormatError` (a ``ValueError``) naming the field when the
        data hold no evaluation or a field has the wrong type.
        """
        data = _mapping(data, "metrics")
        if f"{_OLD_CARD_PREFIX}macro_f1" in data:
            data = {
                key.removeprefix(_OLD_CARD_PREFIX): value
                for key, value in data.items()
                if key.startswith(_OLD_CARD_PREFIX)
            }
        if "macro_f1" not in data:
            raise MetricsFormatError(
                f"metrics hold no evaluation (no 'macro_f1'; keys: {sorted(data)[:8]})"
            )
        per_source = _mapping(data.get("per_source") or {}, "per_source")
        curves = data.get("curves")
        return cls(
            macro_f1=_float(data["macro_f1"], "macro_f1"),
            n=_opt_int(data.get("n"), "n"),
            accuracy=_opt_float(data.get("accuracy"), "accuracy"),
            macro_f1_ci=_interval(data.get("macro_f1_ci"), "macro_f1_ci"),
            per_class=_per_class_from_json(data.get("per_class")),
            confusion_matrix=ConfusionMatrix.from_json(data.get("confusion_matrix")),
            roc_auc_macro=_opt_float(data.get("roc_auc_macro"), "roc_auc_macro"),
            ece=_opt_float(data.get("ece"), "ece"),
            bootstrap=BootstrapInfo.from_json(data.get("bootstrap")),
            per_source={
                str(source): SourceMetrics.from_json(sub, str(source))
                for source, sub in per_source.items()
            },
            curves=_mapping(curves, "curves") if curves is not None else None,
            shortcuts=ShortcutMetrics.from_json(data.get("shortcuts")),
        )

    @classmethod
    def from_json_or_none(cls, data: Any) -> EvaluationResult | None:
        """Like :meth:`from_json`, but None for empty data or data without an evaluation
        (a bootstrap model's card records only training accuracy). Malformed fields
        still raise."""
        if not data:
            return None
        if isinstance(data, Mapping) and not (
            "macro_f1" in data or f"{_OLD_CARD_PREFIX}macro_f1" in data
        ):
            return None
        return cls.from_json(data)

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> EvaluationResult | None:
        """The test-split evaluation a model card records, or None when it records none.

        Old cards stored a summary without ``n``; it is taken from the card's split
        counts then.
        """
        result = cls.from_json_or_none(card.get("metrics"))
        if result is None or result.n is not None:
            return result
        counts = card.get("data", {}).get("split", {}).get("counts", {})
        test = counts.get("test") if isinstance(counts, Mapping) else None
        if test is None:
            return result
        return replace(result, n=_int(test, "data.split.counts.test"))

    def metric(self, key: str) -> float | None:
        """A headline figure by name, ``"macro_f1"`` or ``"<class>.<metric>"`` (tables).

        Unknown names give None, like a figure that was not measured.
        """
        if "." in key:
            name, metric = key.split(".", 1)
            row = self.per_class.get(name)
            value = getattr(row, metric, None) if row is not None else None
        else:
            value = getattr(self, key, None)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return _finite_or_none(float(value))

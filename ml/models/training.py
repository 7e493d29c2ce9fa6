"""Training: records -> arrays -> the fit loop -> artifact, card and report.

One entry point, :func:`train`, used by the CLI (``python -m ml classifier train``) and the
platform's training task; the study (:mod:`ml.research.study`) uses the same pieces
(:func:`resolve_split`, :func:`ml.models.fit.fit`). Reproducible: the same data,
config and seed give the same split and (with op determinism) the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.data.labels import CLASSES
from ml.data.loaders import LABEL_MAPPING_VERSION, Dataset, Record
from ml.data.preprocess import PreprocessSpec
from ml.data.splits import patients_in_several_splits, split_records
from ml.models.architectures import LUNG_MASKED, build_model
from ml.models.arrays import Arrays, load_arrays, prepare_arrays
from ml.models.artifacts import sha256_file, write_card
from ml.models.fit import (
    FitData,
    FitResult,
    FitSettings,
    ProgressHook,
    balanced_class_weight,
    fit,
    predict_batches,
)
from ml.models.operating_point import (
    OperatingPoint,
    apply_offsets,
    choose_offsets,
    choose_specificity_offsets,
    operating_curve,
)

log = logging.getLogger(__name__)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "balanced_class_weight",
    "classifier_probabilities",
    "evaluate_classifier",
    "evaluate_records",
    "load_arrays",
    "predict_batches",
    "train",
]


OPERATING_POINTS = ("argmax", "val-macro-f1", "val-specificity")


@dataclass
class TrainConfig:
    architecture: str = "compact_cnn"
    input_size: int = 128
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    width: int = 16
    # efficientnet_lite0: layers before this block stay at their ImageNet weights (0: all
    # layers are fine-tuned).
    train_from_block: int = 0
    augment: bool = True
    class_weights: bool = True
    patience: int = 6
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_level: str = "patient"
    train_fraction_used: float = 1.0  # share of the training split used (data-size study)
    seed: int = 0
    n_bootstrap: int = 1000
    gradcam_animation: bool = True  # <name>.gradcam.gif: Grad-CAM of 3 val images per epoch
    # Against shortcuts; each is recorded on the card.
    preprocessing: int = 1  # 1: whole image, letterboxed; 2: lung frame (ml.data.preprocess)
    mask_outside: bool = False  # v2: zero everything outside the dilated lung mask
    mask_dilation: float = 0.04  # v2: share of the frame side the kept lung mask grows by
    balanced_sampling: bool = False  # sample evenly over source x class (replaces weights)
    acquisition_augment: bool = False  # crops, gamma, blur/sharpen, noise, JPEG, resampling
    lung_penalty: float = 0.0  # lambda of the explanation-mass-outside-the-lungs penalty
    penalty_on: str = "gradient"  # what the penalty measures: input gradients or Grad-CAM
    min_epochs: int = 0  # no early stop, and no best weights kept, before this epoch
    # "argmax": the trained model as is; "val-macro-f1": per-class logit offsets chosen on
    # the validation split, written into the model (ml.models.operating_point).
    operating_point: str = "argmax"
    # "val-specificity": the targets the offsets must reach on the pooled validation images.
    normal_specificity: float = 0.90
    covid19_specificity: float = 0.90
    # Sources whose normals are left out of a training run of their own each, to count how
    # many of them the recipe calls normal when it never saw the site (ml.models.held_out);
    # ["auto"]: every adult source with normals.
    held_out_normals: list[str] = field(default_factory=list)
    shortcut_tests: bool = True  # lungs-blanked, within-source AUROC, Grad-CAM mass (needs lungs)
    # "val" for model selection: the report and card score the validation split, so that
    # settings are chosen without looking at the test split (which is reported once).
    report_split: str = "test"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.operating_point not in OPERATING_POINTS:
            raise ValueError(
                f"operating_point must be one of {', '.join(OPERATING_POINTS)}, "
                f"not {self.operating_point!r}"
            )
        if self.architecture in LUNG_MASKED and not (self.preprocessing >= 2 and self.mask_outside):
            raise ValueError(
                f"--architecture {self.architecture} pools over the visible lung fields: it "
                "needs --preprocessing 2 --mask-outside."
            )

    def model_kwargs(self) -> dict[str, Any]:
        if self.architecture in ("compact_cnn", "lung_cnn"):
            return {"width": self.width}
        if self.architecture == "efficientnet_lite0":
            return {"train_from_block": self.train_from_block}
        return {}

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(
            input_size=self.input_size,
            version=self.preprocessing,
            mask_outside=self.mask_outside if self.preprocessing >= 2 else False,
            mask_dilation=self.mask_dilation,
        )

    def fit_settings(self) -> FitSettings:
        return FitSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            patience=self.patience,
            seed=self.seed,
            augment=self.augment,
            class_weights=self.class_weights,
            balanced_sampling=self.balanced_sampling,
            acquisition_augment=self.acquisition_augment,
            lung_penalty=self.lung_penalty,
            penalty_on=self.penalty_on,
            min_epochs=self.min_epochs,
            mask_outside=self.mask_outside and self.preprocessing >= 2,
        )

    def needs_segmenter(self) -> bool:
        return self.preprocessing >= 2 or self.lung_penalty > 0 or self.shortcut_tests


@dataclass
class TrainResult:
    artifact: Path
    card: dict[str, Any]
    metrics: Any  # ml.models.metrics.EvaluationResult
    report_dir: Path
    # The report split's probabilities (at the card's operating point), row per image.
    probabilities: np.ndarray | None = None


def resolve_split(
    records: Sequence[Record],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    level: str,
    splits: Sequence[str] | None = None,
    train_fraction_used: float = 1.0,
) -> dict[str, list[int]]:
    """Indices of the train/val/test images: the given split or a computed one.

    ``splits`` (one of train/val/test per record) replaces the computed split: the
    platform passes a dataset snapshot's frozen split so the test images stay the same
    across model versions. A patient-level split that leaks a patient is an error.
    """
    if splits is None:
        splits = split_records(
            records, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, level=level
        )
    elif len(splits) != len(records) or not set(splits) <= {"train", "val", "test"}:
        raise ValueError("splits must name train, val or test for every record.")
    leaked = patients_in_several_splits(records, splits)
    if level == "patient" and leaked:
        raise RuntimeError(f"patient-level split leaked {len(leaked)} patients")
    index = {s: [i for i, name in enumerate(splits) if name == s] for s in ("train", "val", "test")}
    if train_fraction_used < 1.0:
        rng = np.random.default_rng(seed)
        keep = max(len(CLASSES), round(len(index["train"]) * train_fraction_used))
        index["train"] = sorted(rng.choice(index["train"], size=keep, replace=False).tolist())
    for split_name, idx in index.items():
        if not idx:
            raise ValueError(
                f"The {split_name} split is empty: too little data for these fractions."
            )
    return index


def load_segmenter(required: bool) -> Any:
    """The bundled lung segmenter, or None when it is not needed or not there."""
    from ml.lungs.segmenter import BUNDLED_LUNG_MODEL, LungSegmenter

    if not BUNDLED_LUNG_MODEL.is_file():
        if required:
            raise FileNotFoundError(
                f"Preprocessing v2 and the lung penalty need the lung segmenter "
                f"{BUNDLED_LUNG_MODEL} (make train-lungs)."
            )
        log.warning("no lung segmenter at %s: shortcut tests skipped", BUNDLED_LUNG_MODEL)
        return None
    return LungSegmenter.load(BUNDLED_LUNG_MODEL)


def fit_data(
    arrays: Arrays, records: Sequence[Record], index: Sequence[int], y_all: np.ndarray
) -> FitData:
    return FitData(
        arrays=arrays.subset(index),
        y=y_all[list(index)],
        sources=[records[i].source for i in index],
        patients=[records[i].patient for i in index],
    )


def evaluate_split(
    model: keras.Model,
    test: FitData,
    labels: Sequence[str],
    *,
    n_bootstrap: int,
    seed: int,
    shortcut_tests: bool = True,
) -> tuple[Any, np.ndarray]:
    """Metrics (an ``EvaluationResult``) on a held-out split, with the shortcut tests when
    lung masks are known, and the split's probabilities."""
    from ml.models.evaluation import evaluate_predictions

    probs = predict_batches(model, test.arrays.x)
    shortcuts = None
    if shortcut_tests and test.arrays.lungs is not None:
        from ml.models.shortcuts import shortcut_metrics

        shortcuts = shortcut_metrics(
            model,
            test.arrays.x,
            test.arrays.lungs,
            list(labels),
            test.sources,
            CLASSES,
            probs=probs,
            n_bootstrap=n_bootstrap,
            seed=seed,
            patients=test.patients,
        )
    return evaluate_predictions(
        list(labels),
        probs,
        CLASSES,
        sources=test.sources,
        n_bootstrap=n_bootstrap,
        seed=seed,
        shortcuts=shortcuts,
    ), probs


def _animation(
    config: TrainConfig, val: FitData, out_dir: Path, name: str
) -> keras.callbacks.Callback | None:
    if not config.gradcam_animation or config.lung_penalty > 0:
        return None  # the penalty wraps the model: the animation reads the served net only
    from ml.explain.animation import GradCAMAnimation, pick_images

    shown = pick_images(val.y.tolist(), len(CLASSES), sources=val.sources)
    return GradCAMAnimation(
        val.arrays.x[shown], val.y[shown].tolist(), CLASSES, out_dir / f"{name}.gradcam.gif"
    )


def _write_splits(path: Path, records: Sequence[Record], index: dict[str, list[int]]) -> None:
    names = {i: split for split, idx in index.items() for i in idx}
    with path.open("w") as fh:
        fh.write("key,patient,label,source,split\n")
        for i, record in enumerate(records):
            split = names.get(i, "unused")
            fh.write(f"{record.key},{record.patient},{record.label},{record.source},{split}\n")


def _card(
    *,
    name: str,
    config: TrainConfig,
    dataset: Dataset,
    spec: PreprocessSpec,
    segmenter: Any,
    split_source: str,
    index: dict[str, list[int]],
    result: FitResult,
    metrics: Any,
    artifact: Path,
) -> dict[str, Any]:
    preprocessing = spec.to_dict()
    if spec.version >= 2:
        preprocessing["segmenter"] = {
            "artifact": Path(getattr(segmenter, "path", "lung-unet.keras")).name,
            "sha256": segmenter.sha256,
            "version": segmenter.version,
        }
    return {
        "name": name,
        "architecture": config.architecture,
        "classes": list(CLASSES),
        "preprocessing": preprocessing,
        "label_mapping_version": LABEL_MAPPING_VERSION,
        "data": {
            **dataset.summary(),
            "split": {
                "level": config.split_level,
                "source": split_source,
                "seed": config.seed,
                "val_fraction": config.val_fraction,
                "test_fraction": config.test_fraction,
                "counts": {k: len(v) for k, v in index.items()},
            },
        },
        "hyperparameters": asdict(config),
        "training": {
            "seconds": round(result.seconds, 1),
            "epochs_run": result.epochs_run,
            "epochs_planned": config.epochs,
            "best_epoch": result.best_epoch,
            "seconds_per_epoch": round(result.seconds / max(result.epochs_run, 1), 2),
            "best_val_loss": result.best_val_loss,
        },
        "metrics": metrics.to_json(),
        "metrics_split": config.report_split,
        "framework": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "sha256": sha256_file(artifact),
    }


def choose_point(config: TrainConfig, probs: np.ndarray, y: np.ndarray) -> OperatingPoint | None:
    """The operating point of ``config`` on validation probabilities (None: argmax)."""
    if config.operating_point == "val-macro-f1":
        return choose_offsets(probs, y, CLASSES)
    if config.operating_point == "val-specificity":
        return choose_specificity_offsets(
            probs,
            y,
            CLASSES,
            normal_specificity=config.normal_specificity,
            covid19_specificity=config.covid19_specificity,
        )
    return None


def fit_at_point(
    config: TrainConfig,
    train_data: FitData,
    val_data: FitData,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    hook: ProgressHook | None = None,
    progress: bool = False,
) -> tuple[keras.Model, FitResult, dict[str, Any] | None]:
    """Build, fit, and move the model to its operating point (chosen on ``val_data``);
    returns the model, the fit and the card's ``operating_point`` (None: argmax)."""
    net = build_model(
        config.architecture, config.input_size, seed=config.seed, **config.model_kwargs()
    )
    result = fit(
        net,
        train_data,
        val_data,
        config.fit_settings(),
        callbacks=callbacks,
        hook=hook,
        progress=progress,
    )
    val_probs = predict_batches(net, val_data.arrays.x)
    point = choose_point(config, val_probs, val_data.y)
    if point is None:
        return net, result, None
    apply_offsets(net, point, CLASSES)
    log.info(
        "operating point (%s) %s: validation macro-F1 %.3f -> %.3f%s",
        point.method,
        point.offsets,
        point.val_macro_f1_before,
        point.val_macro_f1_after,
        " (the reported validation figures are optimistic: chosen on them)"
        if config.report_split == "val"
        else "",
    )
    return net, result, point_card(point, val_probs, val_data.y)


def point_card(point: OperatingPoint, val_probs: np.ndarray, y_val: np.ndarray) -> dict[str, Any]:
    """The card's ``operating_point``: the offsets, and for the specificity rule the curve
    of other points on the same validation images, from the probabilities before the
    offsets (the version page draws it and a model admin may choose a row of it)."""
    out = point.to_dict()
    if point.method == "val-specificity":
        out["curve"] = operating_curve(val_probs, y_val, CLASSES, point)
    return out


def with_held_out(metrics: Any, held_out: dict[str, Any]) -> Any:
    """``metrics`` (an ``EvaluationResult``) with these held-out-normal figures among its
    shortcut tests."""
    from ml.models.metrics import ShortcutMetrics

    if not held_out:
        return metrics
    shortcuts = metrics.shortcuts or ShortcutMetrics(n=metrics.n or 0)
    return replace(metrics, shortcuts=replace(shortcuts, held_out_normals=held_out))


def card_held_out(card: dict[str, Any]) -> dict[str, Any]:
    """The held-out-normal figures a model card recorded at training time."""
    from ml.models.metrics import HeldOutNormals

    shortcuts = (card.get("metrics") or {}).get("shortcuts") or {}
    return {
        str(source): HeldOutNormals.from_json(value, str(source))
        for source, value in (shortcuts.get("held_out_normals") or {}).items()
    }


def _held_out_runs(
    config: TrainConfig,
    records: Sequence[Record],
    arrays: Arrays,
    index: dict[str, list[int]],
    y_all: np.ndarray,
    *,
    progress: bool,
) -> list[Any]:
    """One training per held-out normal source (``config.held_out_normals``)."""
    from ml.models.held_out import adult_normal_sources, held_out_normals

    sources = list(config.held_out_normals)
    if sources == ["auto"]:
        sources = adult_normal_sources(records)

    def train_model(train_idx: list[int], val_idx: list[int]) -> keras.Model:
        net, _, _ = fit_at_point(
            config,
            fit_data(arrays, records, train_idx, y_all),
            fit_data(arrays, records, val_idx, y_all),
            progress=progress,
        )
        return net

    return [held_out_normals(train_model, records, arrays, index, s) for s in sources]


def train(
    dataset: Dataset,
    out_dir: Path,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    hook: ProgressHook | None = None,
    name: str = "model",
    splits: Sequence[str] | None = None,
    cache: Path | None = None,
) -> TrainResult:
    """Split, train, evaluate on the test split, and write artifact + card + report.

    With ``config.gradcam_animation`` it also writes ``NAME.gradcam.gif`` (Grad-CAM
    of up to three fixed validation images after every epoch, see
    :mod:`ml.explain.animation`), named in the card as ``training_animation``; it
    draws no random numbers, so the trained weights are the same either way.
    """
    from ml.models.evaluation import write_report

    config = config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = dataset.records
    index = resolve_split(
        records,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        level=config.split_level,
        splits=splits,
        train_fraction_used=config.train_fraction_used,
    )
    spec = config.spec()
    segmenter = (
        load_segmenter(required=config.preprocessing >= 2 or config.lung_penalty > 0)
        if config.needs_segmenter()
        else None
    )
    arrays = prepare_arrays(records, spec, segmenter=segmenter, cache=cache, progress=progress)
    y_all = np.array([CLASSES.index(r.label) for r in records], dtype=np.int32)
    train_data, val_data, test_data = (
        fit_data(arrays, records, index[s], y_all) for s in ("train", "val", "test")
    )
    animation = _animation(config, val_data, out_dir, name)
    net, result, point_json = fit_at_point(
        config,
        train_data,
        val_data,
        callbacks=[animation] if animation is not None else [],
        hook=hook,
        progress=progress,
    )
    if config.report_split not in ("test", "val"):
        raise ValueError(f"report_split must be test or val, not {config.report_split!r}")
    scored = test_data if config.report_split == "test" else val_data
    y_true = [records[i].label for i in index[config.report_split]]
    metrics, probs = evaluate_split(
        net,
        scored,
        y_true,
        n_bootstrap=config.n_bootstrap,
        seed=config.seed,
        shortcut_tests=config.shortcut_tests,
    )
    held_out = _held_out_runs(config, records, arrays, index, y_all, progress=progress)
    if held_out:
        metrics = with_held_out(metrics, {h.source: h for h in held_out})
    report_dir = out_dir / "report"
    write_report(
        metrics, y_true, probs, CLASSES, report_dir, title=f"{name}: {config.report_split} split"
    )
    artifact = out_dir / f"{name}.keras"
    net.save(artifact)
    _write_splits(out_dir / "splits.csv", records, index)
    card = _card(
        name=name,
        config=config,
        dataset=dataset,
        spec=spec,
        segmenter=segmenter,
        split_source="given" if splits is not None else config.split_level,
        index=index,
        result=result,
        metrics=metrics,
        artifact=artifact,
    )
    card["operating_point"] = point_json
    if animation is not None and getattr(animation, "written", False):
        card["training_animation"] = animation.path.name
    write_card(artifact, card)
    log.info("wrote %s: test macro-F1 %.3f", artifact, metrics.macro_f1)
    return TrainResult(
        artifact=artifact, card=card, metrics=metrics, report_dir=report_dir, probabilities=probs
    )


def classifier_probabilities(
    classifier: Any, records: Sequence[Record], *, progress: bool = False, batch_size: int = 64
) -> np.ndarray:
    """Probabilities of a loaded ``ml.serving.classifier.Classifier`` for records, in batches."""
    segmenter = classifier.segmenter if classifier.needs_lungs else None
    x = prepare_arrays(records, classifier.spec, segmenter=segmenter, progress=progress).x
    return np.concatenate(
        [classifier.predict_array(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )


def evaluate_records(
    classifier: Any,
    records: Sequence[Record],
    *,
    n_bootstrap: int = 1000,
    progress: bool = False,
    shortcut_tests: bool = True,
) -> tuple[Any, np.ndarray]:
    """Metrics (an ``EvaluationResult``) and probabilities of a loaded ``Classifier``
    (ml.serving) on labelled records, per source too, with the shortcut tests when the
    lung segmenter is there, so a candidate and production are compared on the same
    figures. ``python -m ml classifier evaluate`` and the training task both use it."""
    segmenter = (
        classifier.segmenter
        if classifier.needs_lungs
        else (load_segmenter(required=False) if shortcut_tests else None)
    )
    arrays = prepare_arrays(records, classifier.spec, segmenter=segmenter, progress=progress)
    y_all = np.array([CLASSES.index(r.label) for r in records], dtype=np.int32)
    data = fit_data(arrays, records, list(range(len(records))), y_all)
    result, probs = evaluate_split(
        classifier.model,
        data,
        [r.label for r in records],
        n_bootstrap=n_bootstrap,
        seed=0,
        shortcut_tests=shortcut_tests,
    )
    # Figures of models trained without a source's normals exist only on the card.
    return with_held_out(result, card_held_out(classifier.card)), probs


def evaluate_classifier(
    classifier: Any,
    records: Sequence[Record],
    *,
    n_bootstrap: int = 1000,
    progress: bool = False,
    shortcut_tests: bool = True,
) -> Any:
    """The metrics of :func:`evaluate_records` alone."""
    result, _ = evaluate_records(
        classifier,
        records,
        n_bootstrap=n_bootstrap,
        progress=progress,
        shortcut_tests=shortcut_tests,
    )
    return result

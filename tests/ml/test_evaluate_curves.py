"""The curves stored in an evaluation result, and the figures drawn from the result alone."""

import io
import json
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from ml.models.evaluation import (
    ECE_BINS,
    evaluate_predictions,
    figure_bytes,
    figure_calibration,
    figure_confusion_matrix,
    figure_roc,
    write_report,
)
from ml.models.metrics import EvaluationResult
from tests.ml.test_evaluate import CLASSES, HAND_PRED, HAND_TRUE, noisy_dataset, one_hot_probs


def _curves(result: EvaluationResult) -> Mapping[str, Any]:
    assert result.curves is not None
    return result.curves


def perfect_probs(true, low=0.5, high=0.98):
    confidences = np.linspace(low, high, len(true))
    probs = np.zeros((len(true), len(CLASSES)))
    for row, (label, conf) in enumerate(zip(true, confidences, strict=True)):
        probs[row, :] = (1 - conf) / 2
        probs[row, CLASSES.index(label)] = conf
    return probs


def floats(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from floats(v)
    elif isinstance(value, list):
        for v in value:
            yield from floats(v)
    elif isinstance(value, float):
        yield value


def test_perfect_classifier_has_roc_through_the_top_left_corner_and_auc_one():
    true = ["a", "b", "c"] * 20
    result = evaluate_predictions(true, perfect_probs(true), CLASSES, n_bootstrap=0)

    roc = _curves(result)["roc"]
    assert list(roc) == list(CLASSES)
    for curve in roc.values():
        assert curve["auc"] == 1.0
        points = list(zip(curve["fpr"], curve["tpr"], strict=True))
        assert (0.0, 1.0) in points
        assert points[0] == (0.0, 0.0)
        assert points[-1] == (1.0, 1.0)


def test_calibration_bins_follow_the_ece_bins_and_count_every_image():
    true = ["a", "b", "c"] * 20
    probs = perfect_probs(true)
    result = evaluate_predictions(true, probs, CLASSES, n_bootstrap=0)

    calibration = _curves(result)["calibration"]
    histogram = _curves(result)["confidence_histogram"]
    assert calibration["bins"] == ECE_BINS == 15
    assert sum(calibration["count"]) == len(true)
    assert all(count > 0 for count in calibration["count"])
    assert len(calibration["mean_confidence"]) == len(calibration["accuracy"])
    assert len(calibration["accuracy"]) == len(calibration["count"])
    assert calibration["accuracy"] == [1.0] * len(calibration["count"])  # all correct
    # Confidences run from 0.5 to 0.98: bins (7/15, 8/15] .. (14/15, 1], all filled.
    assert len(calibration["count"]) == 8
    assert calibration["mean_confidence"] == sorted(calibration["mean_confidence"])
    assert 0.5 <= calibration["mean_confidence"][0] <= 8 / 15
    assert histogram["edges"] == [round(i / 15, 4) for i in range(16)]
    assert len(histogram["counts"]) == 15
    assert [c for c in histogram["counts"] if c] == calibration["count"]
    # With every prediction right, ECE is 1 - mean confidence, and so is the
    # count-weighted gap of the stored bins (up to the 4-decimal rounding).
    gap = sum(
        n * (acc - conf)
        for n, acc, conf in zip(
            calibration["count"],
            calibration["accuracy"],
            calibration["mean_confidence"],
            strict=True,
        )
    )
    assert gap / len(true) == pytest.approx(result.ece, abs=1e-4)


def test_hand_example_has_one_calibration_bin_at_its_single_confidence():
    result = evaluate_predictions(HAND_TRUE, one_hot_probs(HAND_PRED), CLASSES, n_bootstrap=0)
    calibration = _curves(result)["calibration"]
    assert calibration["count"] == [10]
    assert calibration["mean_confidence"] == [0.6]
    assert calibration["accuracy"] == [0.7]
    assert _curves(result)["roc"]["a"]["auc"] == round(19 / 24, 4)
    assert sum(_curves(result)["confidence_histogram"]["counts"]) == 10


def test_classes_without_a_roc_curve_are_left_out():
    true = ["a", "b"] * 10
    probs = one_hot_probs(["a", "b"] * 9 + ["c", "a"])
    result = evaluate_predictions(true, probs, CLASSES, n_bootstrap=0)
    assert sorted(_curves(result)["roc"]) == ["a", "b"]

    single = evaluate_predictions(["a", "a"], one_hot_probs(["a", "b"]), CLASSES, n_bootstrap=0)
    assert _curves(single)["roc"] == {}
    assert _curves(single)["calibration"]["count"] == [2]


def test_curves_are_top_level_only():
    sources = ["site1"] * 6 + ["site2"] * 4
    result = evaluate_predictions(
        HAND_TRUE, one_hot_probs(HAND_PRED), CLASSES, sources=sources, n_bootstrap=0
    )
    assert result.curves is not None
    assert "curves" in result.to_json()
    assert all("curves" not in sub.to_json() for sub in result.per_source.values())


def test_long_roc_curves_are_thinned_keeping_both_ends_and_floats_are_rounded():
    true, probs = noisy_dataset(n=6000, seed=4)
    result = evaluate_predictions(true, probs, CLASSES, n_bootstrap=0)

    for name, curve in _curves(result)["roc"].items():
        assert 2 < len(curve["fpr"]) <= 200, name
        assert len(curve["fpr"]) == len(curve["tpr"])
        assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
        assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
        assert np.all(np.diff(curve["fpr"]) >= 0)
        assert np.all(np.diff(curve["tpr"]) >= 0)
        auc = result.per_class[name].roc_auc
        assert auc is not None
        assert curve["auc"] == round(auc, 4)
    assert all(v == round(v, 4) for v in floats(result.curves))
    size = len(json.dumps(result.curves, allow_nan=False))
    assert size < 20_000, size


@pytest.fixture(scope="module")
def noisy_result():
    true, probs = noisy_dataset(n=300)
    return evaluate_predictions(true, probs, CLASSES, n_bootstrap=20)


@pytest.mark.parametrize("draw", [figure_confusion_matrix, figure_roc, figure_calibration])
@pytest.mark.slow
def test_figures_render_from_the_result_alone_to_svg_and_png(noisy_result, draw):
    # as read back from metrics.json
    stored = EvaluationResult.from_json(json.loads(json.dumps(noisy_result.to_json())))
    figure = draw(stored, title="v3")
    assert isinstance(figure, Figure)
    assert all(ax.get_ylabel() for ax in figure.axes)
    assert any(ax.get_xlabel() for ax in figure.axes)

    svg = figure_bytes(figure)
    assert b"<svg" in svg[:2000]
    assert b"<dc:date>" not in svg
    png = figure_bytes(figure, "png")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.size[0] > 300
        assert image.size[1] > 300


def test_roc_figure_has_a_legend_entry_per_class_with_its_auc(noisy_result):
    figure = figure_roc(noisy_result)
    legend = figure.axes[0].get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    for name in CLASSES:
        auc = noisy_result.curves["roc"][name]["auc"]
        assert f"{name} (AUC {auc:.3f})" in texts
    assert "chance" in texts
    colours = {line.get_color() for line in figure.axes[0].get_lines()[:3]}
    assert len(colours) == 3


@pytest.mark.parametrize("draw", [figure_roc, figure_calibration])
def test_figures_of_metrics_without_curves_are_refused(noisy_result, draw):
    old = replace(noisy_result, curves=None)
    with pytest.raises(ValueError, match="no curves"):
        draw(old)
    assert isinstance(figure_confusion_matrix(old), Figure)


@pytest.mark.slow
def test_figures_can_be_drawn_from_several_threads_at_once(noisy_result):
    draws = [figure_confusion_matrix, figure_roc, figure_calibration] * 4
    with ThreadPoolExecutor(max_workers=6) as pool:
        outputs = list(pool.map(lambda draw: figure_bytes(draw(noisy_result), "png"), draws))
    for data in outputs:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    # Same figure, same pixels, whichever thread drew it.
    assert outputs[1] == outputs[4] == outputs[7]


@pytest.mark.slow
def test_write_report_adds_curves_to_a_result_computed_before_them(tmp_path):
    true, probs = noisy_dataset(n=60)
    result = evaluate_predictions(true, probs, CLASSES, n_bootstrap=0)
    old = replace(result, curves=None)

    paths = write_report(old, true, probs, CLASSES, tmp_path)

    assert json.loads(paths["json"].read_text())["curves"] == result.curves
    for kind in ("confusion_matrix", "roc", "calibration"):
        with Image.open(paths[kind]) as image:
            assert image.format == "PNG"


@pytest.mark.slow
def test_importing_evaluate_loads_neither_tensorflow_nor_pyplot():
    code = (
        "import sys, ml.models.evaluation; "
        "bad = [m for m in ('tensorflow', 'keras', 'django', 'matplotlib.pyplot') "
        "if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

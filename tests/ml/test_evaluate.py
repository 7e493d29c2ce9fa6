import json
import math

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from ml.models.evaluation import (
    _bootstrap_metrics,
    evaluate_predictions,
    expected_calibration_error,
    write_report,
)
from ml.models.metrics import BootstrapInfo, EvaluationResult, SourceMetrics

CLASSES = ("a", "b", "c")

# Hand-checkable example: 10 images.
#   true:      a a a a b b b c c c
#   predicted: a a a b b b a c c b
# Confusion matrix (rows true, columns predicted):
#   a: [3, 1, 0]   b: [1, 2, 0]   c: [0, 1, 2]
# a: precision 3/4, recall 3/4, F1 3/4
# b: precision 2/4, recall 2/3, F1 2*(1/2)*(2/3)/(1/2+2/3) = 4/7
# c: precision 2/2, recall 2/3, F1 2*1*(2/3)/(1+2/3) = 4/5
# macro-F1 = (3/4 + 4/7 + 4/5) / 3 = 99/140; accuracy 7/10
# Every predicted class gets 0.6 and the others 0.2, so the top-1 confidence is
# 0.6 everywhere: one ECE bin, ECE = |0.7 - 0.6| = 0.1.
HAND_TRUE = ["a", "a", "a", "a", "b", "b", "b", "c", "c", "c"]
HAND_PRED = ["a", "a", "a", "b", "b", "b", "a", "c", "c", "b"]


def _matrix(result: EvaluationResult | SourceMetrics) -> tuple[tuple[int, ...], ...]:
    assert result.confusion_matrix is not None
    return result.confusion_matrix.matrix


def one_hot_probs(predicted, classes=CLASSES, top=0.6):
    rest = (1 - top) / (len(classes) - 1)
    probs = np.full((len(predicted), len(classes)), rest)
    for row, label in enumerate(predicted):
        probs[row, classes.index(label)] = top
    return probs


def noisy_dataset(n=300, seed=1, accuracy=0.75):
    """A reproducible three-class dataset with a mediocre classifier."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), true] += np.where(rng.random(n) < accuracy, 2.5, 0.0)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return [CLASSES[i] for i in true], probs


@pytest.fixture(scope="module")
def hand_result():
    return evaluate_predictions(HAND_TRUE, one_hot_probs(HAND_PRED), CLASSES, n_bootstrap=200)


def test_hand_example_confusion_matrix(hand_result):
    assert hand_result.n == 10
    assert hand_result.confusion_matrix.labels == ("a", "b", "c")
    assert hand_result.confusion_matrix.matrix == ((3, 1, 0), (1, 2, 0), (0, 1, 2))


def test_hand_example_per_class_metrics(hand_result):
    expected = {
        "a": (3 / 4, 3 / 4, 3 / 4, 4),
        "b": (2 / 4, 2 / 3, 4 / 7, 3),
        "c": (2 / 2, 2 / 3, 4 / 5, 3),
    }
    for name, (precision, recall, f1, support) in expected.items():
        metrics = hand_result.per_class[name]
        assert metrics.precision == pytest.approx(precision)
        assert metrics.recall == pytest.approx(recall)
        assert metrics.f1 == pytest.approx(f1)
        assert metrics.support == support


def test_hand_example_summary_metrics(hand_result):
    assert hand_result.accuracy == pytest.approx(0.7)
    assert hand_result.macro_f1 == pytest.approx(99 / 140)
    assert hand_result.ece == pytest.approx(0.1)
    assert hand_result.bootstrap == BootstrapInfo(
        n=200, seed=0, method="percentile, resampling images with replacement"
    )


def test_hand_example_roc_auc(hand_result):
    # Class a, one-vs-rest scores: positives [.6, .6, .6, .2], negatives [.2, .2, .6, .2, .2, .2].
    # Of 24 pairs, each .6 positive beats five .2 negatives and ties one .6: 3 * 5.5 = 16.5;
    # the .2 positive ties five negatives: 2.5. AUC = 19 / 24.
    assert hand_result.per_class["a"].roc_auc == pytest.approx(19 / 24)
    aucs = [hand_result.per_class[c].roc_auc for c in CLASSES]
    assert hand_result.roc_auc_macro == pytest.approx(sum(aucs) / 3)


def test_perfect_predictions():
    true = ["a", "b", "c"] * 20
    confidences = np.linspace(0.5, 0.98, len(true))
    probs = np.zeros((len(true), 3))
    for row, (label, conf) in enumerate(zip(true, confidences, strict=True)):
        probs[row, :] = (1 - conf) / 2
        probs[row, CLASSES.index(label)] = conf

    result = evaluate_predictions(true, probs, CLASSES, n_bootstrap=300)

    assert result.accuracy == 1.0
    assert result.macro_f1 == 1.0
    assert result.macro_f1_ci == (1.0, 1.0)
    for name in CLASSES:
        metrics = result.per_class[name]
        assert metrics.f1 == 1.0
        assert metrics.f1_ci == (1.0, 1.0)
        assert metrics.precision_ci == (1.0, 1.0)
        assert metrics.recall_ci == (1.0, 1.0)
        assert metrics.roc_auc == 1.0
    assert result.roc_auc_macro == 1.0
    assert result.ece == pytest.approx(1 - confidences.mean())
    assert _matrix(result) == ((20, 0, 0), (0, 20, 0), (0, 0, 20))


def test_confidence_intervals_contain_the_estimate():
    true, probs = noisy_dataset()
    result = evaluate_predictions(true, probs, CLASSES, n_bootstrap=500, seed=3)

    assert result.macro_f1_ci is not None
    lo, hi = result.macro_f1_ci
    assert lo <= result.macro_f1 <= hi
    assert lo < hi  # a mediocre classifier on 300 images is not certain
    for metrics in result.per_class.values():
        for key in ("precision", "recall", "f1"):
            lo, hi = getattr(metrics, f"{key}_ci")
            assert 0.0 <= lo <= getattr(metrics, key) <= hi <= 1.0


def test_same_seed_same_result_and_different_seed_different_intervals():
    true, probs = noisy_dataset()
    first = evaluate_predictions(true, probs, CLASSES, n_bootstrap=200, seed=7)
    again = evaluate_predictions(true, probs, CLASSES, n_bootstrap=200, seed=7)
    other = evaluate_predictions(true, probs, CLASSES, n_bootstrap=200, seed=8)

    assert first == again
    # Point estimates do not depend on the seed; the resamples (and so intervals) do.
    assert other.macro_f1 == first.macro_f1
    assert other.per_class["a"].f1 == first.per_class["a"].f1
    assert other.macro_f1_ci != first.macro_f1_ci
    assert other.bootstrap is not None
    assert other.bootstrap.seed == 8


def test_bootstrap_relabelling_matches_scikit_learn_per_resample():
    true, probs = noisy_dataset(n=50)
    true_idx = np.array([CLASSES.index(t) for t in true])
    pred_idx = probs.argmax(axis=1)
    resamples = np.random.default_rng(0).integers(0, 50, size=(20, 50))

    precision, recall, f1 = _bootstrap_metrics(true_idx, pred_idx, 3, resamples)

    assert precision.shape == recall.shape == f1.shape == (20, 3)
    for b, rows in enumerate(resamples):
        p, r, f, _ = precision_recall_fscore_support(
            true_idx[rows], pred_idx[rows], labels=[0, 1, 2], average=None, zero_division=0
        )
        np.testing.assert_allclose(precision[b], p)
        np.testing.assert_allclose(recall[b], r)
        np.testing.assert_allclose(f1[b], f)


def test_absent_class_gives_no_auc_and_json_without_nan():
    true = ["a", "b", "a", "b", "a", "b"]
    predicted = ["a", "b", "c", "b", "a", "a"]
    result = evaluate_predictions(true, one_hot_probs(predicted), CLASSES, n_bootstrap=100)

    c = result.per_class["c"]
    assert c.roc_auc is None
    assert c.support == 0
    assert c.precision == 0.0  # predicted once, never right
    assert c.recall == 0.0  # zero_division=0
    assert c.recall_ci == (0.0, 0.0)
    defined = [auc for k in ("a", "b") if (auc := result.per_class[k].roc_auc) is not None]
    assert len(defined) == 2
    assert result.roc_auc_macro == pytest.approx(sum(defined) / 2)
    text = json.dumps(result.to_json(), allow_nan=False)
    assert EvaluationResult.from_json(json.loads(text)) == result


def test_single_class_data_has_no_roc_auc_at_all():
    result = evaluate_predictions(["a", "a"], one_hot_probs(["a", "b"]), CLASSES, n_bootstrap=10)
    assert result.roc_auc_macro is None
    assert all(m.roc_auc is None for m in result.per_class.values())
    json.dumps(result.to_json(), allow_nan=False)


def test_result_holds_only_plain_json_types():
    true, probs = noisy_dataset(n=60)
    result = evaluate_predictions(true, probs, CLASSES, sources=["x", "y"] * 30, n_bootstrap=50)

    def check(value):
        if isinstance(value, dict):
            assert all(isinstance(k, str) for k in value)
            for v in value.values():
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)
        else:
            assert value is None or type(value) in (str, int, float, bool), type(value)
            if isinstance(value, float):
                assert math.isfinite(value)

    check(result.to_json())


def test_per_source_splits_the_counts():
    sources = ["site1"] * 6 + ["site2"] * 4
    result = evaluate_predictions(
        HAND_TRUE, one_hot_probs(HAND_PRED), CLASSES, sources=sources, n_bootstrap=50
    )

    assert sorted(result.per_source) == ["site1", "site2"]
    site1, site2 = result.per_source["site1"], result.per_source["site2"]
    # site1: true a a a a b b, predicted a a a b b b; site2: true b c c c, predicted a c c b.
    assert site1.n == 6
    assert site2.n == 4
    assert _matrix(site1) == ((3, 1, 0), (0, 2, 0), (0, 0, 0))
    assert _matrix(site2) == ((0, 0, 0), (1, 0, 0), (0, 1, 2))
    assert site1.accuracy == pytest.approx(5 / 6)
    assert site2.accuracy == pytest.approx(2 / 4)
    assert site1.per_class["b"].recall == pytest.approx(1.0)
    assert site2.per_class["c"].recall == pytest.approx(2 / 3)
    assert "per_source" not in site1.to_json()
    assert "per_source" not in site2.to_json()
    # Macro-F1 over the classes each source actually holds: site1 has a (F1 6/7)
    # and b (F1 4/5); the absent class c does not count as a zero.
    assert site1.classes_present == ("a", "b")
    assert site1.macro_f1_present == pytest.approx((6 / 7 + 4 / 5) / 2)
    # The subsets' matrices add up to the whole.
    total = np.add(_matrix(site1), _matrix(site2))
    assert total.tolist() == result.to_json()["confusion_matrix"]["matrix"]


def test_zero_bootstrap_gives_no_intervals():
    result = evaluate_predictions(HAND_TRUE, one_hot_probs(HAND_PRED), CLASSES, n_bootstrap=0)
    assert result.macro_f1_ci is None
    assert result.per_class["a"].f1_ci is None
    assert result.macro_f1 == pytest.approx(99 / 140)


@pytest.mark.parametrize(
    ("true", "probs", "message"),
    [
        (["a", "z"], np.full((2, 3), 1 / 3), "not in classes"),
        (["a", "b"], np.full((3, 3), 1 / 3), "shape"),
        (["a", "b"], np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]]), "non-negative"),
        (["a", "b"], np.array([[0.5, 0.5, 0.5], [0.2, 0.2, 0.6]]), "sum to 1"),
        ([], np.zeros((0, 3)), "empty"),
    ],
)
def test_bad_inputs_are_refused(true, probs, message):
    with pytest.raises(ValueError, match=message):
        evaluate_predictions(true, probs, CLASSES, n_bootstrap=10)


def test_expected_calibration_error_definition():
    # Two bins: confidence 0.9 (2 images, 1 right) and 0.5 (2 images, 2 right).
    # ECE = 2/4 * |0.5 - 0.9| + 2/4 * |1.0 - 0.5| = 0.2 + 0.25 = 0.45
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    true_idx = np.array([0, 1, 0, 1])
    assert expected_calibration_error(true_idx, probs) == pytest.approx(0.45)


@pytest.mark.slow
def test_write_report_writes_every_file(tmp_path):
    true, probs = noisy_dataset(n=90)
    sources = ["hospital-1", "hospital-2", "hospital-3"] * 30
    result = evaluate_predictions(true, probs, CLASSES, sources=sources, n_bootstrap=100)
    out_dir = tmp_path / "nested" / "report"

    paths = write_report(result, true, probs, CLASSES, out_dir, title="Model v3 on test set")

    assert set(paths) == {"json", "markdown", "confusion_matrix", "roc", "calibration"}
    for path in paths.values():
        assert path.parent == out_dir
        assert path.stat().st_size > 0
    assert paths["json"].name == "metrics.json"
    assert paths["markdown"].name == "report.md"
    assert EvaluationResult.from_json(json.loads(paths["json"].read_text())) == result
    for kind in ("confusion_matrix", "roc", "calibration"):
        assert paths[kind].suffix == ".png"
        with Image.open(paths[kind]) as image:
            assert image.format == "PNG"
            assert image.size[0] > 0
            assert image.size[1] > 0

    report = paths["markdown"].read_text()
    assert result.macro_f1_ci is not None
    lo, hi = result.macro_f1_ci
    assert report.startswith("# Model v3 on test set\n")
    assert f"**Macro-F1:** {result.macro_f1:.3f} [{lo:.3f}, {hi:.3f}]" in report
    assert f"**Accuracy:** {result.accuracy:.3f}" in report
    for name in CLASSES:
        m = result.per_class[name]
        cells = [
            f"{getattr(m, key):.3f} "
            f"[{getattr(m, key + '_ci')[0]:.3f}, {getattr(m, key + '_ci')[1]:.3f}]"
            for key in ("precision", "recall", "f1")
        ]
        row = f"| {name} | {' | '.join(cells)} | {m.support} | {m.roc_auc:.3f} |"
        assert row in report
    matrix_row = "| a | " + " | ".join(str(v) for v in _matrix(result)[0])
    assert matrix_row + " |" in report
    assert f"{result.ece:.3f}" in report
    for source in ("hospital-1", "hospital-2", "hospital-3"):
        assert f"| {source} | 30 | {result.per_source[source].accuracy:.3f} |" in report
    for name in ("confusion_matrix.png", "roc.png", "calibration.png"):
        assert f"]({name})" in report


@pytest.mark.slow
def test_write_report_with_absent_class_and_no_sources(tmp_path):
    true = ["a", "b"] * 10
    predicted = ["a", "b"] * 9 + ["c", "a"]
    probs = one_hot_probs(predicted)
    result = evaluate_predictions(true, probs, CLASSES, n_bootstrap=50)

    paths = write_report(result, true, probs, CLASSES, tmp_path)

    report = paths["markdown"].read_text()
    assert report.startswith("# Evaluation\n")
    assert (
        "| c | 0.000 [0.000, 0.000] | 0.000 [0.000, 0.000] | 0.000 [0.000, 0.000] | 0 | n/a |"
        in (report)
    )
    assert "## Per source" not in report
    with Image.open(paths["roc"]) as image:
        image.verify()


def test_write_report_refuses_a_result_for_other_data(tmp_path):
    result = evaluate_predictions(HAND_TRUE, one_hot_probs(HAND_PRED), CLASSES, n_bootstrap=10)
    with pytest.raises(ValueError, match="result is for 10 images"):
        write_report(result, HAND_TRUE[:5], one_hot_probs(HAND_PRED[:5]), CLASSES, tmp_path)


@pytest.mark.slow
def test_module_imports_neither_django_nor_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, ml.models.evaluation; "
        "bad = [m for m in ('django', 'tensorflow', 'keras') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

"""The typed metrics contract (ml.models.metrics): round trips, old formats, targets."""

import json
from dataclasses import replace
from typing import Any

import pytest

from ml.models.evaluation import evaluate_predictions, write_report
from ml.models.metrics import (
    EvaluationResult,
    MassInLungs,
    MetricsFormatError,
    ShortcutMetrics,
    WithinSourceAuroc,
)
from tests.conftest import FIXTURES, REPO_ROOT
from tests.ml.test_evaluate import CLASSES, noisy_dataset

BUNDLED = REPO_ROOT / "ml" / "bundled"


def shortcuts(**overrides) -> ShortcutMetrics:
    values = {
        "n": 120,
        "nih_pneumonia_auroc": WithinSourceAuroc(
            source="nih-cxr14",
            positive="pneumonia",
            negative="normal",
            auroc=0.83,
            ci=(0.76, 0.89),
            n_positive=40,
            n_negative=50,
        ),
        "covid_chestxray_covid19_auroc": WithinSourceAuroc(
            source="covid-chestxray",
            positive="covid19",
            negative="rest",
            auroc=0.71,
            ci=(0.6, 0.8),
            n_positive=30,
            n_negative=12,
        ),
        "lungs_blanked_accuracy": 0.41,
        "lungs_blanked_accuracy_ci": (0.33, 0.5),
        "lungs_blanked_macro_f1": 0.3,
        "lungs_blanked_macro_f1_ci": (0.22, 0.38),
        "lungs_only_accuracy": 0.7,
        "lungs_only_accuracy_ci": (0.62, 0.78),
        "lungs_only_macro_f1": 0.66,
        "lungs_only_macro_f1_ci": (0.58, 0.74),
        "chance_accuracy": 0.4,
        "gradcam_mass_in_lungs": {
            "covid-chestxray": MassInLungs(mean=0.75, ci=(0.7, 0.8), n=42),
            "nih-cxr14": MassInLungs(mean=0.62, ci=(0.58, 0.66), n=88, n_empty=2),
        },
    }
    return ShortcutMetrics(**{**values, **overrides})


@pytest.fixture(scope="module")
def evaluated():
    true, probs = noisy_dataset(n=90)
    sources = ["nih-cxr14", "covid-chestxray", "pediatric-pneumonia"] * 30
    return evaluate_predictions(
        true, probs, CLASSES, sources=sources, n_bootstrap=50, shortcuts=shortcuts()
    )


def test_an_evaluation_reads_back_equal_from_its_json(evaluated):
    stored = json.loads(json.dumps(evaluated.to_json(), allow_nan=False))
    again = EvaluationResult.from_json(stored)
    assert again == evaluated
    assert again.shortcuts == shortcuts()
    assert again.per_source["nih-cxr14"].macro_f1_present == pytest.approx(
        evaluated.per_source["nih-cxr14"].macro_f1_present
    )
    assert again.to_json() == stored


@pytest.mark.slow
def test_the_report_has_a_shortcut_section_when_the_result_has_shortcut_tests(evaluated, tmp_path):
    true, probs = noisy_dataset(n=90)
    paths = write_report(evaluated, true, probs, CLASSES, tmp_path)
    report = paths["markdown"].read_text()
    assert "## Shortcut tests" in report
    assert "| Lungs blanked: accuracy | 0.410 [0.330, 0.500] | <= 0.45 | yes |" in report
    nih = "| Grad-CAM mass in the lungs: nih-cxr14 | 0.620 [0.580, 0.660] | >= 0.70 | **no** |"
    assert nih in report
    assert "| Lungs only (rest blanked): accuracy | 0.700 [0.620, 0.780] | (reference) |" in report
    assert EvaluationResult.from_json(json.loads(paths["json"].read_text())) == evaluated

    plain = write_report(replace(evaluated, shortcuts=None), true, probs, CLASSES, tmp_path)
    assert "Shortcut tests" not in plain["markdown"].read_text()


def test_shortcut_metrics_read_back_equal_from_json():
    stored = json.loads(json.dumps(shortcuts().to_json(), allow_nan=False))
    assert ShortcutMetrics.from_json(stored) == shortcuts()
    assert ShortcutMetrics.from_json(None) is None
    empty = ShortcutMetrics(n=5)
    assert ShortcutMetrics.from_json(empty.to_json()) == empty


def test_the_json_keys_are_those_metrics_json_always_had(evaluated):
    keys = set(evaluated.to_json())
    assert {"n", "accuracy", "macro_f1", "macro_f1_ci", "per_class", "confusion_matrix"} <= keys
    assert {"roc_auc_macro", "ece", "bootstrap", "per_source", "curves", "shortcuts"} <= keys
    assert not any(key.startswith("test_") for key in keys)


def test_the_bundled_models_old_card_summary_reads_as_an_evaluation():
    card = json.loads((BUNDLED / "cxr-compact.card.json").read_text())
    old = card["metrics"]
    assert "test_macro_f1" in old  # the format before the typed contract

    result = EvaluationResult.from_card(card)
    assert result is not None

    assert result.macro_f1 == old["test_macro_f1"]
    assert result.accuracy == old["test_accuracy"]
    assert result.ece == old["test_ece"]
    assert result.macro_f1_ci == tuple(old["test_macro_f1_ci"])
    assert result.per_class["covid19"].recall == old["test_per_class"]["covid19"]["recall"]
    assert result.per_class["normal"].f1_ci == tuple(old["test_per_class"]["normal"]["f1_ci"])
    assert result.roc_auc_macro == old["test_roc_auc_macro"]
    assert result.n == card["data"]["split"]["counts"]["test"]  # from the card's split
    assert result.confusion_matrix is None
    assert result.curves is None
    assert result.shortcuts is None
    assert EvaluationResult.from_json(old).n is None  # the summary alone does not say


def test_the_bundled_report_written_before_the_contract_reads_back():
    stored = json.loads((BUNDLED / "report" / "metrics.json").read_text())
    result = EvaluationResult.from_json(stored)
    assert result.n == stored["n"] == sum(sub.n for sub in result.per_source.values())
    assert result.confusion_matrix is not None
    assert result.confusion_matrix.labels == tuple(stored["confusion_matrix"]["labels"])
    assert result.curves is not None
    assert set(result.curves) == {"roc", "calibration", "confidence_histogram"}
    assert result.shortcuts is None
    for source, sub in result.per_source.items():
        assert sub.macro_f1_present == stored["per_source"][source]["macro_f1_present"]
    again = result.to_json()
    assert again["shortcuts"] is None
    assert {k: v for k, v in again.items() if k != "shortcuts"} == stored


def test_a_registry_row_stored_from_an_old_card_reads_back():
    # What the registry used to store from an old card: renamed keys, no matrix or curves.
    row: dict[str, Any] = {
        "macro_f1": 0.5,
        "macro_f1_ci": None,
        "accuracy": 0.625,
        "per_class": {},
        "roc_auc_macro": None,
        "ece": 0.125,
        "n": None,
    }
    result = EvaluationResult.from_json(row)
    assert (result.macro_f1, result.accuracy, result.ece, result.n) == (0.5, 0.625, 0.125, None)
    assert result.per_source == {}


def test_a_card_without_an_evaluation_has_none():
    tiny = json.loads((FIXTURES / "models" / "cxr-tiny.card.json").read_text())
    assert "train_accuracy_last_epoch" in tiny["metrics"]
    assert EvaluationResult.from_card(tiny) is None
    assert EvaluationResult.from_json_or_none({}) is None
    assert EvaluationResult.from_json_or_none(None) is None
    with pytest.raises(MetricsFormatError, match="no evaluation"):
        EvaluationResult.from_json(tiny["metrics"])


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"macro_f1": "high"}, "macro_f1"),
        ({"macro_f1": 0.5, "macro_f1_ci": [0.1]}, "macro_f1_ci"),
        ({"macro_f1": 0.5, "per_class": {"covid19": {"precision": 1.0}}}, "'recall'"),
        ({"macro_f1": 0.5, "n": 2.5}, "n must be a whole number"),
        ({"macro_f1": 0.5, "shortcuts": {"lungs_blanked_accuracy": "x"}}, "lungs_blanked"),
        ({"macro_f1": 0.5, "confusion_matrix": {"labels": ["a"], "matrix": [[1, 2]]}}, "1 x 1"),
    ],
)
def test_malformed_metrics_are_refused_naming_the_field(data, field):
    with pytest.raises(MetricsFormatError, match=field):
        EvaluationResult.from_json(data)


def test_checks_compare_each_figure_with_its_target():
    checks = {check.key: check for check in shortcuts().checks()}
    assert checks["nih_pneumonia_auroc"].met is True  # 0.83 >= 0.80
    assert checks["nih_pneumonia_auroc"].ci == (0.76, 0.89)
    assert checks["covid_chestxray_covid19_auroc"].met is False  # 0.71 < 0.80
    assert checks["lungs_blanked_accuracy"].met is True  # 0.41 <= 0.45
    assert checks["lungs_blanked_accuracy"].target == "<= 0.45"
    assert "0.400" in checks["lungs_blanked_accuracy"].note  # chance shown beside it
    assert checks["lungs_only_accuracy"].met is None  # for reference, no target
    assert checks["mass_in_lungs:covid-chestxray"].met is True
    assert checks["mass_in_lungs:nih-cxr14"].met is False  # 0.62 < 0.70
    assert shortcuts().min_mass_in_lungs == 0.62


def test_figures_not_measured_have_no_verdict():
    checks = {check.key: check for check in ShortcutMetrics(n=3).checks()}
    assert checks["lungs_blanked_accuracy"].value is None
    assert checks["lungs_blanked_accuracy"].met is None
    assert checks["nih_pneumonia_auroc"].met is None
    assert not any(key.startswith("mass_in_lungs") for key in checks)


def test_metric_reads_headline_and_per_class_figures(evaluated):
    assert evaluated.metric("macro_f1") == evaluated.macro_f1
    assert evaluated.metric("a.recall") == evaluated.per_class["a"].recall
    assert evaluated.metric("z.recall") is None
    assert evaluated.metric("per_class") is None
    assert EvaluationResult(macro_f1=0.5).metric("ece") is None


def test_the_module_needs_neither_numpy_nor_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, ml.models.metrics; "
        "bad = [m for m in ('numpy', 'tensorflow', 'keras', 'django') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

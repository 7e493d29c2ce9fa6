"""The paired comparison of two classifiers on the same images (ml.models.paired)."""

from __future__ import annotations

import numpy as np
import pytest

from ml.models.paired import PairedComparison, PairedFigure, paired_bootstrap

CLASSES = ("covid19", "normal", "pneumonia")


def _fig(paired: PairedComparison, name: str) -> PairedFigure:
    figure = paired.figure(name)
    assert figure is not None, name
    return figure


def _labels(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [CLASSES[i] for i in rng.integers(0, 3, size=n)]


def _spoilt(truth: list[str], share: float, seed: int) -> list[str]:
    """``truth`` with about ``share`` of the calls moved to the next class."""
    rng = np.random.default_rng(seed)
    return [CLASSES[(CLASSES.index(c) + 1) % 3] if rng.random() < share else c for c in truth]


def test_a_clearly_better_model_on_enough_images_is_called_better():
    truth = _labels(300)
    weak, strong = _spoilt(truth, 0.4, seed=1), _spoilt(truth, 0.1, seed=2)
    paired = paired_bootstrap(truth, weak, strong, CLASSES, n_resamples=500)
    macro = _fig(paired, "macro_f1")
    assert macro.verdict == "better"
    assert macro.ci[0] > 0
    assert macro.diff == pytest.approx(macro.b - macro.a)
    assert _fig(paired, "accuracy").verdict == "better"
    # Read the other way round, the same pair is worse.
    flipped = paired_bootstrap(truth, strong, weak, CLASSES, n_resamples=500)
    assert _fig(flipped, "macro_f1").verdict == "worse"
    counts = paired.agreement
    assert sum(counts.values()) == 300
    assert counts["only_b_right"] > counts["only_a_right"]


def test_the_same_calls_cannot_be_told_apart():
    truth = _labels(100)
    calls = _spoilt(truth, 0.3, seed=3)
    paired = paired_bootstrap(truth, calls, calls, CLASSES, n_resamples=200)
    for figure in paired.figures:
        assert figure.diff == 0
        assert figure.ci == (0.0, 0.0)
        assert figure.verdict == "undecided"


def test_three_images_are_too_few_for_any_verdict():
    truth = ["covid19", "normal", "pneumonia"]
    paired = paired_bootstrap(truth, ["normal"] * 3, truth, CLASSES, n_resamples=200)
    assert not paired.decidable
    assert {f.verdict for f in paired.figures} == {"too_few"}
    assert _fig(paired, "accuracy").diff == pytest.approx(2 / 3)


def test_patients_are_drawn_whole_and_widen_the_interval():
    """Ten films of each of 20 patients are 20 observations, not 200: resampling
    patients gives a wider interval than resampling films."""
    rng = np.random.default_rng(4)
    truth, a, b, patients = [], [], [], []
    for p in range(20):
        label = CLASSES[p % 3]
        a_right, b_right = rng.random() < 0.5, rng.random() < 0.7
        for _ in range(10):
            truth.append(label)
            a.append(label if a_right else CLASSES[(p + 1) % 3])
            b.append(label if b_right else CLASSES[(p + 1) % 3])
            patients.append(f"p{p}")
    by_film = paired_bootstrap(truth, a, b, CLASSES, n_resamples=500)
    by_patient = paired_bootstrap(truth, a, b, CLASSES, patients=patients, n_resamples=500)
    assert by_patient.patients == 20
    assert by_film.patients == 200
    film_ci, patient_ci = _fig(by_film, "accuracy").ci, _fig(by_patient, "accuracy").ci
    film_width = film_ci[1] - film_ci[0]
    patient_width = patient_ci[1] - patient_ci[0]
    assert patient_width > 2 * film_width


def test_it_round_trips_through_json():
    truth = _labels(60)
    paired = paired_bootstrap(truth, _spoilt(truth, 0.3, 5), truth, CLASSES, n_resamples=100)
    again = PairedComparison.from_json(paired.to_json())
    assert again == paired
    assert PairedComparison.from_json_or_none({"n": "x"}) is None
    assert PairedComparison.from_json_or_none(None) is None


@pytest.mark.parametrize(
    ("truth", "a", "b", "message"),
    [
        ([], [], [], "at least one image"),
        (["normal"], ["normal", "normal"], ["normal"], "same images"),
        (["normal"], ["flu"], ["normal"], "not among"),
    ],
)
def test_bad_input_is_refused(truth, a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(truth, a, b, CLASSES)

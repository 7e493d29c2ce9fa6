"""Shortcut tests (ml.models.shortcuts) on constructed arrays and the tiny committed model."""

import json
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from ml.data.preprocess import open_image, preprocess
from ml.explain.methods import explain
from ml.lungs.heuristic import lung_fields
from ml.lungs.masks import mass_in_mask
from ml.models.metrics import ShortcutMetrics, WithinSourceAuroc
from ml.models.shortcuts import (
    blank,
    blanked_predictions,
    gradcam_maps,
    gradcam_mass_in_lungs,
    shortcut_metrics,
    within_source_auroc,
)
from ml.serving.classifier import Classifier
from tests.conftest import FIXTURES, IMAGES, fixture_manifest

CLASSES = ("covid19", "pneumonia", "normal")
TINY = FIXTURES / "models" / "cxr-tiny.keras"


def _auroc(result: Mapping[str, WithinSourceAuroc | None], key: str) -> WithinSourceAuroc:
    value = result[key]
    assert value is not None, key
    return value


@pytest.fixture(scope="module")
def tiny():
    return Classifier.load(TINY)


@pytest.fixture(scope="module")
def fixture_set(tiny):
    """The 18 fixture images as model inputs, their heuristic lung masks, labels, sources."""
    rows = fixture_manifest()
    x = np.stack([preprocess(open_image(IMAGES / row["path"]), tiny.spec) for row in rows])
    masks = np.stack([lung_fields(image).mask for image in x])
    return x, masks, [row["label"] for row in rows], [row["source"] for row in rows]


def boxes(n=3, size=16):
    """Images with distinct values everywhere and a rectangular 'lung' mask per image."""
    rng = np.random.default_rng(0)
    x = rng.random((n, size, size, 1)).astype(np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        masks[i, 3 + i : 10 + i, 2:8] = True
    return x, masks


# --- blanking -----------------------------------------------------------------------------------


def test_blanking_the_lungs_fills_exactly_the_lung_pixels_with_the_image_mean():
    x, masks = boxes()
    original = x.copy()

    out = blank(x, masks, "lungs")

    np.testing.assert_array_equal(x, original)  # the input is not modified
    for image, mask, result in zip(x, masks, out, strict=True):
        mean = image.mean()
        np.testing.assert_allclose(result[mask], mean, rtol=1e-6)
        np.testing.assert_array_equal(result[~mask], image[~mask])
        assert not np.allclose(image[mask], mean)  # it did change something


def test_lungs_only_fills_everything_outside_the_lungs_with_the_image_mean():
    x, masks = boxes()
    out = blank(x, masks, "outside")
    for image, mask, result in zip(x, masks, out, strict=True):
        np.testing.assert_allclose(result[~mask], image.mean(), rtol=1e-6)
        np.testing.assert_array_equal(result[mask], image[mask])


def test_blanking_uses_each_channels_own_mean():
    x = np.zeros((1, 4, 4, 2), dtype=np.float32)
    x[..., 0] = 1.0
    x[0, 0, 0, 1] = 0.8  # channel 1 mean: 0.05
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = True
    out = blank(x, masks, "lungs")
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 0.05], rtol=1e-6)


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        (np.zeros((3, 16, 15), dtype=bool), "input frame"),
        (np.zeros((2, 16, 16), dtype=bool), "input frame"),
        (np.zeros((3, 16, 16), dtype=np.uint8), "bool"),
    ],
)
def test_blanking_refuses_masks_that_are_not_in_the_input_frame(masks, message):
    x, _ = boxes()
    with pytest.raises(ValueError, match=message):
        blank(x, masks, "lungs")


def test_blanking_refuses_an_unknown_mode():
    x, masks = boxes()
    with pytest.raises(ValueError, match="mode"):
        blank(x, masks, "heart")  # type: ignore[arg-type]  # an unknown mode, on purpose


def test_blanked_predictions_feed_the_blanked_images_in_batches():
    x, masks = boxes(n=5)
    seen = []

    def predict(batch):
        seen.append(batch.copy())
        # probabilities that depend on the input: mean brightness of the batch images
        means = batch.mean(axis=(1, 2, 3))
        return np.stack([means, 1 - means, np.zeros_like(means)], axis=1)

    probs = blanked_predictions(predict, x, masks, "lungs", batch=2)

    assert [len(b) for b in seen] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(seen), blank(x, masks, "lungs"))
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs[:, 0], blank(x, masks, "lungs").mean(axis=(1, 2, 3)))


# --- within-source discrimination ---------------------------------------------------------------


def constructed_probabilities():
    """Labels, sources and probabilities where each source's scores are known."""
    rng = np.random.default_rng(3)
    labels, sources = [], []
    for source, mix in (
        ("nih-cxr14", ["normal"] * 30 + ["pneumonia"] * 20),
        ("covid-chestxray", ["covid19"] * 25 + ["pneumonia"] * 10 + ["normal"] * 5),
        ("pediatric-pneumonia", ["normal"] * 10 + ["pneumonia"] * 10),
    ):
        labels += mix
        sources += [source] * len(mix)
    probs = rng.dirichlet([1, 1, 1], size=len(labels))
    for row, label in zip(probs, labels, strict=True):
        row[CLASSES.index(label)] += rng.random()  # informative, not perfect
    return labels, sources, probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.slow
def test_within_source_auroc_equals_scikit_learns_on_each_sources_images():
    labels, sources, probs = constructed_probabilities()
    labels_a, sources_a = np.array(labels), np.array(sources)

    result = within_source_auroc(labels, probs, CLASSES, sources, n_bootstrap=200, seed=1)

    nih = (sources_a == "nih-cxr14") & np.isin(labels_a, ["normal", "pneumonia"])
    expected_nih = roc_auc_score(labels_a[nih] == "pneumonia", probs[nih, 1])
    covid = sources_a == "covid-chestxray"
    expected_covid = roc_auc_score(labels_a[covid] == "covid19", probs[covid, 0])
    assert _auroc(result, "nih_pneumonia_auroc").auroc == pytest.approx(expected_nih)
    assert _auroc(result, "covid_chestxray_covid19_auroc").auroc == pytest.approx(expected_covid)
    assert (
        _auroc(result, "nih_pneumonia_auroc").n_positive,
        _auroc(result, "nih_pneumonia_auroc").n_negative,
    ) == (
        20,
        30,
    )
    covid_result = _auroc(result, "covid_chestxray_covid19_auroc")
    assert (covid_result.n_positive, covid_result.n_negative) == (25, 15)
    for value in result.values():
        assert value is not None
        assert value.ci is not None
        assert value.auroc is not None
        low, high = value.ci
        assert 0.0 <= low <= value.auroc <= high <= 1.0
        assert low < high


@pytest.mark.slow
def test_within_source_auroc_is_reproducible_and_accepts_the_old_nih_source_name():
    labels, sources, probs = constructed_probabilities()
    old = ["adult-normal" if s == "nih-cxr14" else s for s in sources]
    first = within_source_auroc(labels, probs, CLASSES, sources, n_bootstrap=100, seed=4)
    again = within_source_auroc(labels, probs, CLASSES, sources, n_bootstrap=100, seed=4)
    renamed = within_source_auroc(labels, probs, CLASSES, old, n_bootstrap=100, seed=4)
    assert first == again
    assert (
        _auroc(renamed, "nih_pneumonia_auroc").auroc == _auroc(first, "nih_pneumonia_auroc").auroc
    )
    assert _auroc(renamed, "nih_pneumonia_auroc").ci == _auroc(first, "nih_pneumonia_auroc").ci
    assert _auroc(renamed, "nih_pneumonia_auroc").source == "adult-normal"


def test_within_source_auroc_is_none_without_the_source_or_one_side():
    labels = ["normal", "normal", "covid19", "pneumonia"]
    sources = ["nih-cxr14", "nih-cxr14", "pediatric-pneumonia", "pediatric-pneumonia"]
    probs = np.full((4, 3), 1 / 3)
    result = within_source_auroc(labels, probs, CLASSES, sources, n_bootstrap=10)
    nih = _auroc(result, "nih_pneumonia_auroc")
    assert nih.auroc is None  # no pneumonia among the NIH images
    assert nih.ci is None
    assert (nih.n_positive, nih.n_negative) == (0, 2)
    assert result["covid_chestxray_covid19_auroc"] is None  # no covid-chestxray images


# --- Grad-CAM -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_batched_gradcam_agrees_with_ml_explains_gradcam(tiny, fixture_set):
    x = fixture_set[0][:5]
    maps, predicted = gradcam_maps(tiny.model, x, batch=2)
    assert maps.shape == x.shape[:3]
    for image, values, target in zip(x, maps, predicted, strict=True):
        heatmap = explain(tiny.model, image, "gradcam")
        assert heatmap.target_class == target
        np.testing.assert_allclose(values, heatmap.values, atol=1e-4)


@pytest.mark.slow
def test_mass_in_lungs_is_one_for_a_full_mask_and_zero_for_an_empty_one(tiny, fixture_set):
    x, _, _, sources = fixture_set
    full = np.ones(x.shape[:3], dtype=bool)
    inside = gradcam_mass_in_lungs(tiny.model, x, full, sources, n_bootstrap=50)
    outside = gradcam_mass_in_lungs(tiny.model, x, ~full, sources, n_bootstrap=50)
    assert set(inside) == set(sources)
    for source, mass in inside.items():
        if mass.n:
            assert mass.mean == pytest.approx(1.0)
            assert outside[source].mean == pytest.approx(0.0)
        assert mass.n + mass.n_empty == sources.count(source)


def test_mass_in_lungs_is_the_per_source_mean_of_each_maps_share(tiny, fixture_set):
    x, masks, _, sources = fixture_set
    result = gradcam_mass_in_lungs(tiny.model, x, masks, sources, n_bootstrap=100, seed=2)
    maps, _ = gradcam_maps(tiny.model, x)
    for source, mass in result.items():
        shares = [
            mass_in_mask(m, k)
            for m, k, s in zip(maps, masks, sources, strict=True)
            if s == source and m.max() > 0
        ]
        assert mass.n == len(shares)
        assert mass.mean == pytest.approx(np.mean(shares))
        assert mass.ci is not None
        assert mass.mean is not None
        assert mass.ci[0] <= mass.mean <= mass.ci[1]


def test_a_map_concentrated_inside_the_mask_has_all_its_mass_in_the_lungs():
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:24, 4:14] = True
    heatmap = np.zeros((32, 32), dtype=np.float32)
    heatmap[10:20, 6:12] = np.linspace(0.2, 1.0, 60).reshape(10, 6)
    assert mass_in_mask(heatmap, mask) == pytest.approx(1.0)
    heatmap[0, 0] = 0.5  # a little outside
    assert 0.98 < mass_in_mask(heatmap, mask) < 1.0


# --- all together -------------------------------------------------------------------------------


@pytest.mark.slow
def test_shortcut_metrics_of_the_tiny_model_match_their_definitions(tiny, fixture_set):
    x, masks, labels, sources = fixture_set
    result = shortcut_metrics(tiny, x, masks, labels, sources, tiny.classes, n_bootstrap=100)

    true_idx = [tiny.classes.index(label) for label in labels]
    modes: list[tuple[Literal["lungs", "outside"], str]] = [
        ("lungs", "lungs_blanked"),
        ("outside", "lungs_only"),
    ]
    for mode, prefix in modes:
        predicted = tiny.predict_array(blank(x, masks, mode)).argmax(axis=1)
        accuracy = accuracy_score(true_idx, predicted)
        macro_f1 = f1_score(true_idx, predicted, labels=[0, 1, 2], average="macro")
        assert getattr(result, f"{prefix}_accuracy") == pytest.approx(accuracy)
        assert getattr(result, f"{prefix}_macro_f1") == pytest.approx(macro_f1)
        low, high = getattr(result, f"{prefix}_accuracy_ci")
        assert low <= accuracy <= high
    # 18 images: 7 covid19, 6 pneumonia (4 paediatric + 2 pneumocystis), 5 normal
    assert result.n == 18
    assert result.chance_accuracy == pytest.approx(max(labels.count(c) for c in tiny.classes) / 18)
    assert result.covid_chestxray_covid19_auroc is not None
    assert result.covid_chestxray_covid19_auroc.n_positive == labels.count("covid19")
    assert result.nih_pneumonia_auroc is not None
    assert result.nih_pneumonia_auroc.auroc is None  # the fixtures' NIH images are all normal
    assert set(result.gradcam_mass_in_lungs) == set(sources)
    assert all(
        m.mean is not None and 0.0 <= m.mean <= 1.0
        for m in result.gradcam_mass_in_lungs.values()
        if m.n
    )
    # JSON round trip: what the card and the registry store reads back the same.
    stored = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert ShortcutMetrics.from_json(stored) == result


def test_shortcut_metrics_with_a_predict_function_skips_gradcam(fixture_set, tiny):
    x, masks, labels, sources = fixture_set
    result = shortcut_metrics(
        tiny.predict_array, x, masks, labels, sources, tiny.classes, n_bootstrap=0
    )
    assert result.gradcam_mass_in_lungs == {}
    assert result.min_mass_in_lungs is None
    assert result.lungs_blanked_accuracy is not None
    assert result.lungs_blanked_accuracy_ci is None  # n_bootstrap=0


def test_shortcut_metrics_refuses_labels_outside_the_classes(fixture_set, tiny):
    x, masks, _, sources = fixture_set
    with pytest.raises(ValueError, match="not in classes"):
        shortcut_metrics(
            tiny, x, masks, ["tuberculosis"] * len(x), sources, tiny.classes, gradcam=False
        )


@pytest.mark.slow
def test_shortcuts_module_imports_without_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, ml.models.shortcuts, ml.models.metrics; "
        "bad = [m for m in ('tensorflow', 'keras', 'django') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

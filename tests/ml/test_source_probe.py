"""The source probe: can a linear classifier tell the site from a model's features?"""

import numpy as np

from ml.models.shortcuts import source_probe


def test_features_that_name_the_site_are_found_and_features_that_do_not_are_at_chance():
    rng = np.random.default_rng(0)
    sources = ["nih"] * 60 + ["teaching"] * 40
    patients = [f"p{i // 2}" for i in range(100)]  # two images a patient, kept in one fold
    site = np.array([0.0 if s == "nih" else 1.0 for s in sources])
    noise = rng.normal(size=(100, 8))
    named = source_probe(noise + 3.0 * site[:, None], sources, patients, among="all")
    blind = source_probe(noise, sources, patients, among="normal")
    assert named is not None
    assert blind is not None
    assert named.chance == blind.chance == 0.6
    assert named.accuracy is not None
    assert named.ci is not None
    assert blind.accuracy is not None
    assert named.accuracy >= 0.95
    assert named.ci[0] <= named.accuracy <= named.ci[1]
    assert blind.accuracy <= 0.75  # near the 0.6 chance: nothing to find
    assert blind.among == "normal"
    assert set(named.sources) == {"nih", "teaching"}


def test_too_few_images_of_a_second_source_give_no_probe():
    features = np.zeros((12, 4))
    assert source_probe(features, ["a"] * 10 + ["b"] * 2) is None

"""The served-model contract (ml.serving.protocol): the four models a worker loads satisfy
it, and the classifier's ``prepare`` is the one place its input is made."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ml.data.preprocess import open_image
from ml.lungs.segmenter import BUNDLED_LUNG_MODEL, LungSegmenter
from ml.models.artifacts import read_card, sha256_file
from ml.serving.classifier import Classifier
from ml.serving.protocol import ServedModel
from ml.serving.runtime import lite_path_for
from tests.conftest import IMAGES, REPO_ROOT

CXR_LUNGS = REPO_ROOT / "ml" / "bundled" / "cxr-lungs" / "cxr-lungs.keras"
TINY = REPO_ROOT / "tests" / "fixtures" / "models" / "cxr-tiny.keras"


def _lite_classifier(path) -> Classifier:
    return Classifier.load_lite(
        lite_path_for(path), card=read_card(path), source_sha256=sha256_file(path)
    )


def test_the_four_served_models_satisfy_the_contract():
    from ml.ct.segmenter import CTSegmenter
    from ml.generate.sampler import Generator

    # mypy checks these against the protocol (load, prepare, run, sha256, runtime).
    kinds: list[type[ServedModel]] = [Classifier, LungSegmenter, CTSegmenter, Generator]
    assert len(kinds) == 4
    lungs = LungSegmenter.load_lite(BUNDLED_LUNG_MODEL)
    classifier = _lite_classifier(TINY)
    for model in (lungs, classifier):
        assert isinstance(model, ServedModel)
        assert model.runtime == "litert"
    assert lungs.sha256 == sha256_file(BUNDLED_LUNG_MODEL)
    assert classifier.sha256 == sha256_file(TINY)  # the Keras file it was converted from
    x, _ = lungs.prepare(open_image(IMAGES / "2168a917.jpg"))
    assert x.shape == (lungs.size, lungs.size)
    probabilities = lungs.run(x[np.newaxis])
    assert probabilities.shape == (1, lungs.size, lungs.size)
    assert 0.0 <= float(probabilities.min()) <= float(probabilities.max()) <= 1.0


def test_a_lung_masked_classifier_makes_its_input_with_its_own_segmenters_lungs_only():
    classifier = _lite_classifier(CXR_LUNGS)
    assert classifier.needs_lungs
    image = open_image(IMAGES / "2168a917.jpg")
    own, lungs, _ = classifier.prepare(image)
    assert lungs.found
    assert classifier.uses_lungs_of(lungs.version)
    reused, same, segment_ms = classifier.prepare(image, lungs)
    assert same is lungs
    assert segment_ms == 0.0
    np.testing.assert_array_equal(reused.x, own.x)
    # Lungs of another segmenter are not its input's: it segments the image itself.
    foreign = dataclasses.replace(
        lungs, mask=np.ones_like(lungs.mask), version="other@000000000000"
    )
    again, taken, _ = classifier.prepare(image, foreign)
    assert taken is not foreign
    np.testing.assert_array_equal(again.x, own.x)


@pytest.mark.parametrize("found", [True, False])
def test_a_v1_classifiers_input_does_not_depend_on_the_lungs_given(found):
    classifier = _lite_classifier(TINY)
    assert not classifier.needs_lungs
    image = open_image(IMAGES / "2168a917.jpg")
    plain, none, _ = classifier.prepare(image)
    assert none is None
    lungs = LungSegmenter.load_lite(BUNDLED_LUNG_MODEL).segment(image)
    lungs = dataclasses.replace(lungs, found=found)
    carried, _, _ = classifier.prepare(image, lungs)
    np.testing.assert_array_equal(carried.x, plain.x)
    assert (carried.lung_mask is not None) == found  # only carried into the frame

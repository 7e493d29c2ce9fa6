import json
import shutil

import numpy as np
import pytest

from ml.data.labels import CLASSES
from ml.data.preprocess import open_image
from ml.models.architectures import build_compact_cnn
from ml.models.artifacts import ArtifactIntegrityError, card_path, sha256_file
from ml.serving.classifier import Classifier
from tests.conftest import IMAGES, REPO_ROOT, fixture_manifest

BUNDLED = REPO_ROOT / "ml" / "bundled" / "cxr-compact.keras"


@pytest.fixture(scope="module")
def classifier():
    card = json.loads(card_path(BUNDLED).read_text())
    return Classifier.load(BUNDLED, expected_sha256=card["sha256"])


def test_bundled_card_matches_its_artifact_and_its_committed_report():
    card = json.loads(card_path(BUNDLED).read_text())
    assert card["sha256"] == sha256_file(BUNDLED)
    assert card["classes"] == list(CLASSES)
    assert card["preprocessing"]["input_size"] == 128
    assert card["data"]["split"]["level"] == "patient"
    report = json.loads((BUNDLED.parent / "report" / "metrics.json").read_text())
    assert report["macro_f1"] == card["metrics"]["test_macro_f1"]
    assert report["n"] == card["data"]["split"]["counts"]["test"]
    assert set(report["per_source"]) == {"covid-chestxray", "pediatric-pneumonia", "adult-normal"}


def test_predict_returns_probabilities_over_the_three_classes(classifier):
    for row in fixture_manifest()[:6]:
        result = classifier.predict(open_image(IMAGES / row["path"]))
        assert set(result.probabilities) == set(CLASSES)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert result.label == max(result.probabilities, key=result.probabilities.get)


def test_direct_call_matches_keras_predict(classifier):
    batch = np.random.default_rng(0).random((2, 128, 128, 1), dtype=np.float32)
    assert np.allclose(
        classifier.predict_array(batch), classifier.model.predict(batch, verbose=0), atol=1e-5
    )


def test_load_refuses_an_artifact_whose_hash_differs(tmp_path):
    copy = tmp_path / "m.keras"
    shutil.copy(BUNDLED, copy)
    shutil.copy(card_path(BUNDLED), card_path(copy))
    with pytest.raises(ArtifactIntegrityError, match="registry expects"):
        Classifier.load(copy, expected_sha256="a" * 64)


def test_card_with_wrong_class_count_is_refused():
    model = build_compact_cnn(input_size=32, n_classes=2)
    card = {"classes": list(CLASSES), "preprocessing": {"input_size": 32}}
    with pytest.raises(ValueError, match="2 outputs but its card lists 3 classes"):
        Classifier(model, card)

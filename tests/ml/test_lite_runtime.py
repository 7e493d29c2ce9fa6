"""The LiteRT path (ml.serving.runtime) serves what the Keras path serves, without
TensorFlow, and refuses a lite file that is not the one converted from the Keras
artifact the registry names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ml.models.artifacts import ArtifactIntegrityError, read_card, sha256_file
from ml.serving.runtime import convert_to_lite, lite_path_for, load_lite_runner
from tests.conftest import IMAGES, REPO_ROOT

BUNDLED = REPO_ROOT / "ml" / "bundled" / "cxr-lungs" / "cxr-lungs.keras"
FIXTURE_IMAGES = sorted(
    p for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
)
DATA_FOLDERS = ("covid-chestxray", "pediatric-pneumonia", "adult-normal", "adult-pneumonia")


@pytest.fixture(scope="module")
def both():
    from ml.serving.classifier import Classifier

    card = read_card(BUNDLED)
    keras_path = Classifier.load(BUNDLED, expected_sha256=sha256_file(BUNDLED))
    lite_path = Classifier.load_lite(
        lite_path_for(BUNDLED), card=card, source_sha256=sha256_file(BUNDLED)
    )
    return keras_path, lite_path


def _compare(keras_path, lite_path, paths) -> tuple[float, list[str]]:
    """Largest probability difference and the images whose label differs. Both paths
    get the same lung result (the lite one segments with the lite U-Net: compared
    separately) so the classifier alone is compared here."""
    worst, differ = 0.0, []
    for path in paths:
        image = Image.open(path)
        lungs = lite_path.segmenter.segment(image)
        a = keras_path.predict(image, lungs=lungs)
        b = lite_path.predict(image, lungs=lungs)
        diff = max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities)
        worst = max(worst, diff)
        if a.label != b.label:
            differ.append(path.name)
    return worst, differ


@pytest.mark.slow
def test_lite_classifier_matches_keras_on_the_fixture_images(both):
    keras_path, lite_path = both
    assert keras_path.runtime == "keras"
    assert lite_path.runtime == "litert"
    assert lite_path.model is None
    worst, differ = _compare(keras_path, lite_path, FIXTURE_IMAGES)
    assert differ == []
    assert worst <= 1e-4, worst


@pytest.mark.slow
def test_lite_lung_segmenter_matches_keras(both):
    keras_path, lite_path = both
    for path in FIXTURE_IMAGES[:8]:
        image = Image.open(path)
        a = keras_path.segmenter.segment(image)
        b = lite_path.segmenter.segment(image)
        assert a.version == b.version  # the segmenter version names the Keras artifact
        assert a.found == b.found
        disagree = float(np.mean(a.mask != b.mask))
        assert disagree < 1e-3, (path.name, disagree)


@pytest.mark.slow
def test_lite_labels_identical_to_keras_on_the_whole_test_split(both, shared_datasets):
    from ml.serving.ood import chest_xray_paths

    keras_path, lite_path = both
    dirs = [shared_datasets / name for name in DATA_FOLDERS]
    paths = chest_xray_paths(dirs, BUNDLED.parent / "splits.csv")["test"]
    assert len(paths) == 255
    worst, differ = _compare(keras_path, lite_path, paths)
    print(f"\n{len(paths)} test images: labels differing {len(differ)}, max |dp| {worst:.2e}")
    assert differ == []
    assert worst <= 1e-4, worst


@pytest.mark.slow
def test_the_lite_path_never_imports_tensorflow():
    """What an inference worker does: load both lite models and classify an image, in
    a fresh interpreter; TensorFlow and Keras must not be in sys.modules after it."""
    code = f"""
import sys
from PIL import Image
from ml.models.artifacts import read_card, sha256_file
from ml.serving.classifier import Classifier
from ml.serving.runtime import lite_path_for
path = {str(BUNDLED)!r}
c = Classifier.load_lite(lite_path_for(path), card=read_card(path), source_sha256=sha256_file(path))
p = c.predict(Image.open({str(FIXTURE_IMAGES[0])!r}))
print(p.label, p.lungs.found)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    label_line, modules_line = out.stdout.strip().splitlines()[-2:]
    assert label_line.split()[0] in ("covid19", "pneumonia", "normal")
    assert modules_line == "[]", modules_line


@pytest.mark.slow
def test_a_lite_file_is_only_served_for_the_keras_file_it_was_converted_from(tmp_path):
    source = tmp_path / "lung-unet.keras"
    shutil.copy(REPO_ROOT / "ml" / "bundled" / "lung-unet.keras", source)
    record = convert_to_lite(source)
    lite = tmp_path / "lung-unet.tflite"
    assert record["sha256"] == sha256_file(lite)
    assert record["source_sha256"] == sha256_file(source)
    runner = load_lite_runner(lite, source_sha256=sha256_file(source))
    assert runner(np.zeros((2, 128, 128, 1), np.float32)).shape[0] == 2

    with pytest.raises(ArtifactIntegrityError, match="converted from a Keras file"):
        load_lite_runner(lite, source_sha256="0" * 64)
    with lite.open("r+b") as fh:  # one byte changed
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ArtifactIntegrityError, match="its record says"):
        load_lite_runner(lite)
    (tmp_path / "lung-unet.tflite.json").unlink()
    with pytest.raises(FileNotFoundError, match="lite convert"):
        load_lite_runner(lite)
    assert json.loads(json.dumps(record))["converter"].startswith("tensorflow ")

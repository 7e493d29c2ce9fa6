"""Registration converts a classifier for the inference queue's LiteRT runtime and stores
the ``.tflite`` beside the ``.keras`` artifact; the inference path serves it, falls back to
Keras (with a warning) for a version without one, and refuses a tampered file."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path, PurePosixPath

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from PIL import Image

from apps.models import serving
from apps.models.models import ModelVersion
from apps.models.services import register_artifact
from ml.models.artifacts import ArtifactIntegrityError, card_path, sha256_file
from tests.conftest import IMAGES

FIXTURES = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


@pytest.fixture(autouse=True)
def empty_model_cache():
    serving.clear_cache()
    yield
    serving.clear_cache()


def _stored_bytes(version: ModelVersion, name: str) -> bytes:
    with version.artifact.storage.open(name, "rb") as fh:
        return fh.read()


def _copy_without_lite(target: Path) -> Path:
    """The tiny model under another name, no ``.tflite`` beside it (same sha256)."""
    shutil.copy(settings.CXR_BUNDLED_MODEL, target)
    shutil.copy(card_path(settings.CXR_BUNDLED_MODEL), card_path(target))
    return target


@pytest.mark.django_db
def test_registration_stores_the_lite_file_beside_the_artifact_with_its_hashes():
    version = register_artifact(artifact_path=settings.CXR_BUNDLED_MODEL)
    lite = version.card["lite"]
    assert (
        PurePosixPath(lite["artifact"]).parent == PurePosixPath(str(version.artifact.name)).parent
    )
    assert lite["artifact"].endswith(".tflite")
    assert lite["source_sha256"] == version.sha256
    data = _stored_bytes(version, lite["artifact"])
    assert data[4:8] == b"TFL3"  # the flatbuffer's file identifier
    shipped = settings.CXR_BUNDLED_MODEL.with_suffix(".tflite")
    assert lite["sha256"] == sha256_file(shipped)
    assert data == shipped.read_bytes()
    version.refresh_from_db()
    assert version.card["lite"] == lite  # recorded in the database, not only in memory


@pytest.mark.django_db
@pytest.mark.slow
def test_an_artifact_without_a_lite_file_is_converted_at_registration(tmp_path):
    artifact = _copy_without_lite(tmp_path / "fresh.keras")
    version = register_artifact(artifact_path=artifact)
    lite = version.card["lite"]
    assert lite["converter"].startswith("tensorflow ")
    assert lite["source_sha256"] == sha256_file(artifact)
    data = _stored_bytes(version, lite["artifact"])
    assert data[4:8] == b"TFL3"
    assert not artifact.with_suffix(".tflite").exists()  # converted aside, not beside the input
    classifier = serving.classifier_for(version, runtime="litert")
    assert classifier.runtime == "litert"


@pytest.mark.django_db
def test_litert_and_keras_give_the_same_answers_on_the_fixture_images(production_model):
    lite = serving.classifier_for(production_model, runtime="litert")
    keras = serving.classifier_for(production_model, runtime="keras")
    assert (lite.runtime, keras.runtime) == ("litert", "keras")
    assert lite.model is None
    for path in FIXTURES:
        image = Image.open(path)
        a, b = keras.predict(image), lite.predict(image)
        assert a.label == b.label, path.name
        for name in a.probabilities:
            assert abs(a.probabilities[name] - b.probabilities[name]) <= 1e-4, path.name


@pytest.mark.django_db
@pytest.mark.slow
def test_a_version_without_a_lite_file_is_served_by_keras_with_a_warning_until_converted(
    production_model, caplog
):
    card = dict(production_model.card)
    del card["lite"]
    ModelVersion.objects.filter(pk=production_model.pk).update(card=card)
    production_model.refresh_from_db()
    with caplog.at_level(logging.WARNING, logger="apps.models.serving"):
        classifier = serving.classifier_for(production_model, runtime="litert")
    assert classifier.runtime == "keras"
    assert "has no LiteRT file" in caplog.text

    call_command("lite_convert")
    production_model.refresh_from_db()
    lite = production_model.card["lite"]
    assert lite["source_sha256"] == production_model.sha256
    assert _stored_bytes(production_model, lite["artifact"])[4:8] == b"TFL3"
    assert serving.classifier_for(production_model, runtime="litert").runtime == "litert"


@pytest.mark.django_db
def test_lite_convert_names_versions_that_do_not_exist():
    with pytest.raises(CommandError, match="No classification version with id 999"):
        call_command("lite_convert", "999")


@pytest.mark.django_db
def test_a_tampered_lite_file_is_refused(production_model):
    name = production_model.card["lite"]["artifact"]
    path = Path(production_model.artifact.storage.path(name))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        serving.classifier_for(production_model, runtime="litert")


@pytest.mark.django_db
@pytest.mark.slow
def test_a_lite_file_converted_from_another_artifact_is_not_used(tmp_path):
    """A stale ``.tflite`` beside an artifact (its record names another .keras) is not
    stored as this artifact's: the model is converted again."""
    artifact = _copy_without_lite(tmp_path / "m.keras")
    with artifact.open("ab") as fh:
        fh.write(b"\0")  # another artifact (zip readers ignore trailing bytes)
    card = json.loads(card_path(artifact).read_text())
    card["sha256"] = sha256_file(artifact)
    card_path(artifact).write_text(json.dumps(card))
    stale = settings.CXR_BUNDLED_MODEL.with_suffix(".tflite")
    shutil.copy(stale, artifact.with_suffix(".tflite"))
    shutil.copy(stale.with_name(stale.name + ".json"), tmp_path / "m.tflite.json")
    version = register_artifact(artifact_path=artifact)
    assert version.card["lite"]["source_sha256"] == sha256_file(artifact)
    assert version.card["lite"]["converter"].startswith("tensorflow ")

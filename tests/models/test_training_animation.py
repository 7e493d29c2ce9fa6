"""Registering an artifact stores its training animation (Grad-CAM GIF) when it has one."""

import io
import json

import pytest
from PIL import GifImagePlugin, Image

from apps.models import services
from apps.models.models import ModelVersion
from apps.models.services import RegistryError, register_artifact
from ml.models.artifacts import card_path, read_card
from ml.models.metrics import EvaluationResult
from tests.conftest import REPO_ROOT
from tests.models.test_registry import make_variant


def tiny_gif(frames: int = 3) -> bytes:
    images = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], loop=0)
    return buffer.getvalue()


def with_animation(artifact, name="other.gradcam.gif", *, write=True):
    card = json.loads(card_path(artifact).read_text())
    card["training_animation"] = name
    card_path(artifact).write_text(json.dumps(card))
    if write:
        (artifact.parent / name).write_bytes(tiny_gif())
    return artifact


def _animation(version: ModelVersion) -> str:
    assert version.training_animation.name, "no training animation stored"
    return version.training_animation.name


def _evaluation(version: ModelVersion) -> EvaluationResult:
    assert version.evaluation is not None
    return version.evaluation


@pytest.fixture
def artifact(tmp_path):
    target = make_variant(tmp_path / "other.keras", b"\0")
    card = json.loads(card_path(target).read_text())
    card.pop("training_animation", None)
    card["metrics"] = {"test_macro_f1": 0.5, "test_accuracy": 0.625, "test_ece": 0.125}
    card_path(target).write_text(json.dumps(card))
    return target


@pytest.mark.django_db
def test_registering_an_artifact_with_a_gif_stores_the_gif(artifact, media_root):
    with_animation(artifact)
    version = register_artifact(artifact_path=artifact)

    version.refresh_from_db()
    assert _animation(version).endswith(".gif")
    stored = media_root / _animation(version)
    assert stored.read_bytes() == (artifact.parent / "other.gradcam.gif").read_bytes()
    with Image.open(stored) as image:
        assert isinstance(image, GifImagePlugin.GifImageFile)
        assert image.n_frames == 3
    assert version.card["training_animation"] == "other.gradcam.gif"


@pytest.mark.django_db
def test_registering_an_artifact_without_a_gif_leaves_the_field_empty(artifact, media_root):
    version = register_artifact(artifact_path=artifact)
    version.refresh_from_db()
    assert not version.training_animation
    assert not any(media_root.rglob("*.gif"))


@pytest.mark.django_db
def test_a_gif_named_by_the_card_but_missing_is_skipped(artifact, media_root):
    with_animation(artifact, write=False)
    version = register_artifact(artifact_path=artifact)
    assert not version.training_animation
    assert ModelVersion.objects.count() == 1


@pytest.mark.django_db
def test_a_card_naming_a_path_outside_the_artifacts_folder_is_refused(artifact, media_root):
    with_animation(artifact, name="../elsewhere.gif", write=False)
    with pytest.raises(RegistryError, match="not a GIF file name"):
        register_artifact(artifact_path=artifact)
    assert ModelVersion.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_failed_registration_deletes_the_stored_gif_and_artifact(
    artifact, media_root, monkeypatch
):
    with_animation(artifact)

    def refuse(**kwargs):
        raise RegistryError("promotion refused")

    monkeypatch.setattr(services, "promote", refuse)
    with pytest.raises(RegistryError, match="promotion refused"):
        register_artifact(artifact_path=artifact, make_production=True)
    assert ModelVersion.objects.count() == 0
    assert not any(p.is_file() for p in media_root.rglob("*"))


@pytest.mark.django_db
@pytest.mark.slow
def test_the_shipped_model_registers_with_its_gif_and_its_curves(media_root):
    shipped = REPO_ROOT / "ml" / "bundled" / "cxr-compact.keras"
    card = read_card(shipped)
    version = register_artifact(artifact_path=shipped)

    assert _animation(version).endswith(".gif")
    with Image.open(media_root / _animation(version)) as image:
        assert isinstance(image, GifImagePlugin.GifImageFile)
        assert image.is_animated
        assert image.n_frames == card["training"]["epochs_run"]
    # The full report (curves included) is stored, matching the card's summary.
    evaluation, summary = _evaluation(version), EvaluationResult.from_card(card)
    assert summary is not None
    assert evaluation.macro_f1 == summary.macro_f1
    assert evaluation.curves is not None
    assert set(evaluation.curves) == {"roc", "calibration", "confidence_histogram"}
    assert evaluation.confusion_matrix is not None
    assert list(evaluation.confusion_matrix.labels) == card["classes"]


@pytest.mark.django_db
def test_the_report_beside_the_artifact_is_stored_when_it_matches_the_card(artifact):
    report = artifact.parent / "report"
    report.mkdir()
    metrics = {"macro_f1": 0.5, "accuracy": 0.625, "ece": 0.125, "curves": {"roc": {}}}
    (report / "metrics.json").write_text(json.dumps(metrics))
    version = register_artifact(artifact_path=artifact)
    assert version.metrics == EvaluationResult.from_json(metrics).to_json()
    assert _evaluation(version).curves == {"roc": {}}


@pytest.mark.django_db
def test_a_report_of_another_model_beside_the_artifact_is_not_attached(artifact):
    report = artifact.parent / "report"
    report.mkdir()
    (report / "metrics.json").write_text(json.dumps({"macro_f1": 0.123, "curves": {}}))
    version = register_artifact(artifact_path=artifact)
    assert _evaluation(version).curves is None
    assert _evaluation(version).macro_f1 == 0.5
    assert _evaluation(version).accuracy == 0.625

"""The worker's one model cache (apps.models.serving) and the lung U-Net as a registry
task: versions, promotion, rollback and audit, and the lung masks of predictions
computed with the version that serves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.cases import services as case_services
from apps.cases.models import Prediction
from apps.models import serving
from apps.models.models import TASKS, ModelVersion, Task
from apps.models.services import register_artifact
from cxrplatform.jobs import run_job_now
from ml.models.artifacts import card_path, sha256_file
from ml.serving.runtime import lite_path_for
from tests.conftest import upload_of


def _lung_model() -> Path:
    """The lung U-Net that CXR_LUNG_MODEL names (the bundled one)."""
    assert settings.CXR_LUNG_MODEL is not None
    return Path(settings.CXR_LUNG_MODEL)


@pytest.fixture(autouse=True)
def empty_model_cache():
    serving.clear_cache()
    yield
    serving.clear_cache()


class _Loaded:
    """A stand-in for a loaded model: what the cache keeps does not matter to it."""

    runtime = "keras"

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256


def _loader(loads: list[str], sha256: str):
    def load():
        loads.append(sha256)
        return _Loaded(sha256)

    return load


# --- the cache --------------------------------------------------------------------------


def test_two_calls_give_the_same_loaded_object_and_a_changed_sha256_reloads():
    loads: list[str] = []
    first = serving.served("classifier", ("v1", "a" * 64, "keras"), _loader(loads, "a"))
    again = serving.served("classifier", ("v1", "a" * 64, "keras"), _loader(loads, "a"))
    assert again is first
    assert loads == ["a"]
    changed = serving.served("classifier", ("v1", "b" * 64, "keras"), _loader(loads, "b"))
    assert changed is not first
    assert loads == ["a", "b"]
    other_runtime = serving.served("classifier", ("v1", "b" * 64, "litert"), _loader(loads, "b"))
    assert other_runtime is not changed
    assert loads == ["a", "b", "b"]


def test_the_cache_is_bounded_per_kind_and_keeps_what_was_used_last():
    loads: list[str] = []
    generator = serving.served("generator", ("/g.keras", "g", "keras"), _loader(loads, "g"))
    for sha in ("a", "b"):
        serving.served("classifier", ("v1", sha, "keras"), _loader(loads, sha))
    serving.served("classifier", ("v1", "a", "keras"), _loader(loads, "a"))  # used last
    serving.served("classifier", ("v2", "c", "keras"), _loader(loads, "c"))
    assert len(serving._cache) == serving.MAX_PER_KIND + 1
    assert ("v1", "b", "keras") not in serving._cache  # the least recently used one went
    assert ("v1", "a", "keras") in serving._cache
    # Another kind's model is not pushed out by the classifiers.
    assert serving.served("generator", ("/g.keras", "g", "keras"), _loader(loads, "g")) is (
        generator
    )
    assert loads == ["g", "a", "b", "c"]


@pytest.mark.django_db
def test_the_real_callers_share_one_loaded_object(production_model):
    lite = serving.classifier_for(production_model, runtime="litert")
    assert serving.classifier_for(production_model, runtime="litert") is lite
    lungs = serving.lung_segmenter("litert")
    assert lungs is not None
    assert serving.lung_segmenter("litert") is lungs
    assert lungs.sha256 == sha256_file(_lung_model())
    assert set(serving._cache.values()) == {lite, lungs}


# --- the lung U-Net in the registry -----------------------------------------------------


def _lung_variant(folder: Path, name: str) -> Path:
    """Another lung U-Net artifact: the bundled one's bytes plus a trailing byte (another
    sha256, the same weights), with its card and its LiteRT file recorded as converted
    from it (so registering it converts nothing)."""
    source = _lung_model()
    target = folder / f"{name}.keras"
    shutil.copy(source, target)
    with target.open("ab") as fh:
        fh.write(b"\0")
    card = json.loads(card_path(source).read_text())
    card.update(name=name, sha256=sha256_file(target))
    card_path(target).write_text(json.dumps(card))
    lite = lite_path_for(target)
    shutil.copy(lite_path_for(source), lite)
    record = json.loads(Path(f"{lite_path_for(source)}.json").read_text())
    record.update(artifact=lite.name, source=target.name, source_sha256=card["sha256"])
    Path(f"{lite}.json").write_text(json.dumps(record))
    return target


def _lung_version_of_a_prediction(clinician, capture) -> str:
    with capture(execute=False):
        case = case_services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.DONE, prediction.error
    assert prediction.lungs_found is True
    return prediction.segmenter_version


@pytest.mark.django_db
def test_the_first_start_registers_the_bundled_lung_unet_as_production_once(capsys):
    call_command("register_model", "--bundled", "--if-no-production")
    lungs = ModelVersion.objects.production(task=Task.LUNG_SEGMENTATION)
    assert lungs is not None
    assert lungs.sha256 == sha256_file(_lung_model())
    assert lungs.card["lite"]["source_sha256"] == lungs.sha256  # the bundled .tflite
    assert lungs.metrics  # the card's Dice and IoU
    assert "(Chest X-ray lung segmentation)" in capsys.readouterr().out
    call_command("register_model", "--bundled", "--if-never-promoted")
    assert ModelVersion.objects.filter(task=Task.LUNG_SEGMENTATION).count() == 1
    # Serving takes the registered version (its stored files), not the setting's path.
    segmenter = serving.lung_segmenter("litert")
    assert segmenter is not None
    assert segmenter is serving.lung_segmenter_for(lungs, runtime="litert")


@pytest.mark.django_db
def test_register_model_takes_the_lung_task_and_its_card_names_it(tmp_path):
    artifact = _lung_variant(tmp_path, "lung-b")
    call_command("register_model", str(artifact))  # the card says "lung segmentation"
    version = ModelVersion.objects.get(sha256=sha256_file(artifact))
    assert version.task == Task.LUNG_SEGMENTATION
    assert version.status == ModelVersion.Status.CANDIDATE
    call_command("register_model", "--bundled", "--task", "lung_segmentation", "--promote")
    production = ModelVersion.objects.production(task=Task.LUNG_SEGMENTATION)
    assert production is not None
    assert production.sha256 == sha256_file(_lung_model())


@pytest.mark.django_db
@pytest.mark.slow
def test_a_promoted_lung_version_computes_the_masks_and_a_rollback_restores_the_first(
    login, model_admin, clinician, production_model, tmp_path, django_capture_on_commit_callbacks
):
    first = register_artifact(
        artifact_path=_lung_model(), make_production=True, task="lung_segmentation"
    )
    candidate = register_artifact(artifact_path=_lung_variant(tmp_path, "lung-b"))
    assert candidate.task == Task.LUNG_SEGMENTATION
    capture = django_capture_on_commit_callbacks
    assert _lung_version_of_a_prediction(clinician, capture) == f"lung-unet@{first.sha256[:12]}"

    client = login(model_admin)
    index = client.get(reverse("registry:index")).content.decode()
    assert 'id="lung-versions"' in index
    assert "Versions: Chest X-ray lung segmentation" in index
    assert f'data-version="{candidate.pk}" data-status="candidate"' in index
    detail = client.get(reverse("registry:version", args=[candidate.pk])).content.decode()
    assert "The lung segmenter serving now is" in detail

    response = client.post(reverse("registry:promote", args=[candidate.pk]), follow=True)
    assert "now serves all new lung masks" in response.content.decode()
    assert ModelVersion.objects.production(task=Task.LUNG_SEGMENTATION) == candidate
    assert ModelVersion.objects.production() == production_model  # the classifier stays
    assert _lung_version_of_a_prediction(clinician, capture) == f"lung-b@{candidate.sha256[:12]}"

    index = client.get(reverse("registry:index")).content.decode()
    assert f"Roll back the lung segmenter to #{first.pk}" in index
    client.post(reverse("registry:rollback"), {"task": "lung_segmentation"})
    assert ModelVersion.objects.production(task=Task.LUNG_SEGMENTATION) == first
    assert _lung_version_of_a_prediction(clinician, capture) == f"lung-unet@{first.sha256[:12]}"

    events = AuditEvent.objects.filter(actor=model_admin, action__startswith="model.")
    assert [
        (e.action, e.target_id, e.after["production"]["task"]) for e in events.order_by("pk")
    ] == [
        ("model.promote", str(candidate.pk), "lung_segmentation"),
        ("model.promote", str(first.pk), "lung_segmentation"),
        ("model.rollback", str(first.pk), "lung_segmentation"),
    ]


def test_every_task_names_a_served_model_class_and_its_bundled_setting():
    import importlib

    assert set(TASKS) == set(Task.values)
    for spec in TASKS.values():
        module, _, name = spec.served.rpartition(".")
        served = getattr(importlib.import_module(module), name)
        for member in ("load", "prepare", "run"):  # ml.serving.protocol.ServedModel
            assert callable(getattr(served, member)), (name, member)
        assert hasattr(settings, spec.bundled_setting)


def test_the_same_artifact_and_card_registered_again_is_the_loaded_model(production_model):
    """A row registered again with the same artifact and card (another pk, as after a
    database restore) serves the model already loaded; another card loads its own."""
    from apps.models.models import ModelVersion
    from apps.models.serving import classifier_for, version_key

    first = classifier_for(production_model)
    again = ModelVersion.objects.get(pk=production_model.pk)
    again.pk = production_model.pk + 1000  # a different row, same artifact and card
    assert version_key(again) == version_key(production_model)
    assert classifier_for(again) is first
    card = production_model.card
    moved = {**card, "lite": {**card["lite"], "artifact": "elsewhere/cxr-tiny.tflite"}}
    assert version_key(ModelVersion(sha256=production_model.sha256, card=moved)) == (
        version_key(production_model)  # where the registry stored a file is not the model
    )
    other = {**card, "postprocessing": {"temperature": 2.0}}
    assert version_key(ModelVersion(sha256=production_model.sha256, card=other)) != (
        version_key(production_model)
    )

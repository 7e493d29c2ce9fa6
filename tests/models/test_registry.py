import json
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction

from apps.accounts.models import AuditEvent
from apps.models.models import ModelVersion
from apps.models.services import RegistryError, promote, register_artifact
from ml.models.artifacts import card_path, sha256_file
from ml.serving.runtime import lite_path_for, read_lite_record


@pytest.mark.django_db
def test_registering_the_bundled_model_copies_it_and_is_idempotent(media_root):
    first = register_artifact(artifact_path=settings.CXR_BUNDLED_MODEL, make_production=True)
    second = register_artifact(artifact_path=settings.CXR_BUNDLED_MODEL, make_production=True)
    assert first.pk == second.pk
    assert ModelVersion.objects.count() == 1
    assert first.status == ModelVersion.Status.PRODUCTION
    assert (
        sha256_file(first.artifact.path) == first.sha256 == sha256_file(settings.CXR_BUNDLED_MODEL)
    )
    assert first.card["classes"] == ["covid19", "pneumonia", "normal"]


def make_variant(target, extra: bytes, *, with_lite: bool = True):
    """A different artifact: the bundled model's bytes plus trailing bytes, with its card.

    The weights are the bundled model's, so its LiteRT file is this artifact's conversion
    too: ``with_lite`` puts it beside the variant with a sidecar naming the variant, as
    ``python -m ml lite convert`` would (registration then stores it instead of
    converting again, ~3 s each; tests/models/test_lite_registration.py converts)."""
    shutil.copy(settings.CXR_BUNDLED_MODEL, target)
    with target.open("ab") as fh:
        fh.write(extra)
    card = json.loads(card_path(settings.CXR_BUNDLED_MODEL).read_text())
    card["sha256"] = sha256_file(target)
    card_path(target).write_text(json.dumps(card))
    if with_lite:
        shipped = lite_path_for(settings.CXR_BUNDLED_MODEL)
        lite = lite_path_for(target)
        shutil.copy(shipped, lite)
        record = read_lite_record(shipped)
        record.update(artifact=lite.name, source=target.name, source_sha256=card["sha256"])
        Path(f"{lite}.json").write_text(json.dumps(record))
    return target


@pytest.fixture
def second_artifact(tmp_path):
    return make_variant(tmp_path / "other.keras", b"\0")


@pytest.mark.django_db
def test_promotion_archives_the_previous_production_version(second_artifact):
    old = register_artifact(artifact_path=settings.CXR_BUNDLED_MODEL, make_production=True)
    new = register_artifact(artifact_path=second_artifact)
    assert new.status == ModelVersion.Status.CANDIDATE
    promote(version=new)
    old.refresh_from_db()
    assert old.status == ModelVersion.Status.ARCHIVED
    assert ModelVersion.objects.production() == new


@pytest.mark.django_db
def test_database_allows_only_one_production_version(second_artifact):
    register_artifact(artifact_path=settings.CXR_BUNDLED_MODEL, make_production=True)
    other = register_artifact(artifact_path=second_artifact)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=other.pk).update(status=ModelVersion.Status.PRODUCTION)


@pytest.mark.django_db
def test_card_that_describes_another_artifact_is_refused(second_artifact, media_root):
    card = json.loads(card_path(second_artifact).read_text())
    card["sha256"] = "f" * 64
    card_path(second_artifact).write_text(json.dumps(card))
    with pytest.raises(RegistryError, match="records sha256 ffff"):
        register_artifact(artifact_path=second_artifact)
    assert ModelVersion.objects.count() == 0
    assert not any(media_root.rglob("*.keras"))


@pytest.mark.django_db
@pytest.mark.slow
def test_the_demos_registration_leaves_an_earlier_version_to_roll_back_to(capsys):
    """`make demo`: the first release serves, the bundled default replaces it through the
    gate, once; a later start keeps what a model admin chose since (here, a rollback)."""
    from apps.models import services

    compact = settings.BASE_DIR / "ml" / "bundled" / "cxr-compact.keras"
    for _ in range(2):
        call_command("register_model", str(compact), "--name", "v1", "--if-no-production")
        call_command("register_model", "--bundled", "--if-never-promoted")
    bundled = ModelVersion.objects.production()
    assert bundled is not None
    assert bundled.sha256 == sha256_file(settings.CXR_BUNDLED_MODEL)
    target = services.rollback_target()
    assert target is not None
    assert target.name == "v1"
    assert list(
        AuditEvent.objects.filter(action="model.promote", after__production__task="classification")
        .order_by("pk")
        .values_list("target_id", flat=True)
    ) == [str(ModelVersion.objects.get(name="v1").pk), str(bundled.pk)]
    # The first start also made the bundled lung U-Net the production lung segmenter.
    assert ModelVersion.objects.filter(task="lung_segmentation", status="production").count() == 1
    services.rollback()
    call_command("register_model", "--bundled", "--if-never-promoted")
    production = ModelVersion.objects.production()
    assert production is not None
    assert production.name == "v1"


@pytest.mark.django_db
def test_register_model_command_promotes_only_when_asked(capsys):
    call_command("register_model", "--bundled", "--if-no-production")
    assert ModelVersion.objects.production() is not None
    assert "production" in capsys.readouterr().out
    with pytest.raises(CommandError, match="either an artifact path or --bundled"):
        call_command("register_model")

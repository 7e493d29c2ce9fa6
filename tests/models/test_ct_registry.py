"""The registry per task: a CT segmenter is versioned, promoted and rolled back like a
classifier, within its own task (one production version per task)."""

from __future__ import annotations

import json
import shutil
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, transaction

from apps.models import services
from apps.models.models import ModelVersion
from ml.models.artifacts import card_path

pytestmark = pytest.mark.django_db


def test_a_ct_model_is_registered_with_its_task_from_its_card(ct_tiny_model):
    version = services.register_artifact(artifact_path=ct_tiny_model)
    assert version.task == "ct_segmentation"
    assert version.status == "candidate"
    assert version.evaluation is None  # a classifier's metrics only
    assert version.card["preprocessing"]["size"] > 0


def test_each_task_has_its_own_production_version(production_model, ct_production_model):
    assert ModelVersion.objects.production() == production_model
    assert ModelVersion.objects.production(task="classification") == production_model
    assert ModelVersion.objects.production(task="ct_segmentation") == ct_production_model
    production_model.refresh_from_db()
    assert production_model.status == "production"
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=production_model.pk).update(task="ct_segmentation")


def test_promoting_a_ct_model_archives_only_the_previous_ct_model(
    production_model, ct_production_model, ct_tiny_model, tmp_path
):
    other = tmp_path / "ct-other.keras"
    shutil.copyfile(ct_tiny_model, other)
    with other.open("ab") as fh:  # another artifact (bytes after the zip are ignored)
        fh.write(b"\0")
    card = json.loads(card_path(ct_tiny_model).read_text())
    card.pop("sha256", None)
    card_path(other).write_text(json.dumps(card))
    candidate = services.register_artifact(artifact_path=other, name="ct-other")
    services.promote(version=candidate, reason="test")
    ct_production_model.refresh_from_db()
    production_model.refresh_from_db()
    assert ct_production_model.status == "archived"
    assert production_model.status == "production"
    restored = services.rollback(task="ct_segmentation")
    assert restored == ct_production_model
    assert ModelVersion.objects.production() == production_model


def test_rolling_back_a_task_without_production_says_which(production_model):
    with pytest.raises(services.RegistryError, match="ct lesion segmentation"):
        services.rollback(task="ct_segmentation")


def test_a_task_given_against_the_card_is_refused(ct_tiny_model):
    with pytest.raises(services.RegistryError, match="describes a ct_segmentation model"):
        services.register_artifact(artifact_path=ct_tiny_model, task="classification")


def test_register_model_takes_the_task_and_says_when_the_bundled_one_is_missing(
    settings, ct_tiny_model, tmp_path
):
    out = StringIO()
    call_command("register_model", str(ct_tiny_model), "--promote", stdout=out)
    assert "(CT lesion segmentation)" in out.getvalue()
    assert ModelVersion.objects.production(task="ct_segmentation") is not None
    settings.CXR_BUNDLED_CT_MODEL = tmp_path / "none.keras"
    out = StringIO()
    call_command(
        "register_model", "--bundled", "--task", "ct_segmentation", "--if-present", stdout=out
    )
    assert "No bundled CT segmenter at" in out.getvalue()
    with pytest.raises(CommandError, match="does not exist"):
        call_command("register_model", "--bundled", "--task", "ct_segmentation")


def test_the_registry_page_lists_ct_versions_apart(client, model_admin, ct_production_model):
    client.force_login(model_admin)
    page = client.get("/registry/").content.decode()
    assert "Versions: CT lesion segmentation" in page
    assert f"#{ct_production_model.pk} ct-tiny" in page
    detail = client.get(f"/registry/versions/{ct_production_model.pk}/").content.decode()
    assert "CT lesion segmentation" in detail
    assert "Preprocessing" in detail

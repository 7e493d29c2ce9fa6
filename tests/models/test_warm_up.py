"""The model registry's app config makes each new worker pool process load the
production model (``worker_process_init``), only where ``CXR_WARM_MODEL=1``."""

import pytest
from celery.signals import worker_process_init
from django.conf import settings

from apps.models import serving
from apps.models.models import ModelVersion
from ml.models.artifacts import sha256_file


@pytest.fixture
def empty_model_cache():
    serving.clear_cache()
    yield serving._cache
    serving.clear_cache()


def test_a_new_inference_worker_process_loads_the_production_model(
    production_model, empty_model_cache, monkeypatch
):
    monkeypatch.setenv("CXR_WARM_MODEL", "1")
    worker_process_init.send(sender=None)  # what Celery sends in each new pool process
    # On the inference runtime (LiteRT by default): the file converted at registration,
    # and the lung segmenter every prediction runs (CXR_LUNG_MODEL's file: none is
    # registered), in the one cache.
    key = (serving.version_key(production_model), production_model.sha256, "litert")
    assert settings.CXR_LUNG_MODEL is not None
    lungs = (str(settings.CXR_LUNG_MODEL), sha256_file(settings.CXR_LUNG_MODEL), "litert")
    assert list(empty_model_cache) == [lungs, key]
    assert empty_model_cache[lungs].runtime == "litert"
    classifier = empty_model_cache[key]
    assert classifier.runtime == "litert"
    assert classifier.model is None
    assert list(classifier.classes) == production_model.classes


def test_other_worker_processes_do_not_load_a_model(
    production_model, empty_model_cache, monkeypatch
):
    monkeypatch.setenv("CXR_WARM_MODEL", "0")
    worker_process_init.send(sender=None)
    assert not empty_model_cache


@pytest.mark.django_db
def test_production_is_the_one_promoted_version_or_none():
    assert ModelVersion.objects.production() is None
    ModelVersion.objects.create(name="a", sha256="a" * 64, status=ModelVersion.Status.CANDIDATE)
    served = ModelVersion.objects.create(
        name="b", sha256="b" * 64, status=ModelVersion.Status.PRODUCTION
    )
    assert ModelVersion.objects.production() == served

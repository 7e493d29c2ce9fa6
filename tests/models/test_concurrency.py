"""Requests that race, on PostgreSQL: two "start
training" at once make one run and one root snapshot; two promotions at once answer
200 and 409, never a 500."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections
from django.test import Client
from django.urls import reverse

from apps.models import services
from apps.models.datasets import import_reference_dataset
from apps.models.models import DatasetSnapshot, ModelVersion, TrainingRun
from tests.conftest import IMAGES
from tests.models.test_registry import make_variant

pytestmark = pytest.mark.django_db(transaction=True)


def _race(target, arguments) -> list:
    """Run ``target`` on each argument in its own thread, all released at once."""
    if connection.vendor != "postgresql":
        pytest.skip("concurrent transactions need PostgreSQL (CI runs it)")
    barrier = threading.Barrier(len(arguments))
    outcomes: list = []

    def run(argument):
        try:
            barrier.wait()
            outcomes.append(target(argument))
        except Exception as exc:  # recorded: the test asserts on what each one got
            outcomes.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(a,)) for a in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


@pytest.mark.slow
def test_two_training_starts_at_once_make_one_run_and_one_root_snapshot(settings, model_admin):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    import_reference_dataset(IMAGES / "manifest.csv", "generic")

    def start(_):
        return services.start_training_run(requested_by=model_admin)

    outcomes = _race(start, [1, 2])
    runs = [o for o in outcomes if isinstance(o, TrainingRun)]
    refusals = [o for o in outcomes if isinstance(o, services.RegistryError)]
    assert (len(runs), len(refusals)) == (1, 1), outcomes
    assert "still pending" in str(refusals[0])
    assert TrainingRun.objects.count() == 1
    assert DatasetSnapshot.objects.count() == 1


@pytest.mark.slow
def test_two_promotions_at_once_answer_200_and_409(tmp_path, model_admin):
    from django.conf import settings as django_settings

    services.register_artifact(
        artifact_path=django_settings.CXR_BUNDLED_MODEL, make_production=True
    )
    a = services.register_artifact(artifact_path=make_variant(tmp_path / "a.keras", b"a"))
    b = services.register_artifact(artifact_path=make_variant(tmp_path / "b.keras", b"b"))

    def promote(version):
        client = Client()
        client.force_login(model_admin)
        response = client.post(
            reverse("api:model-promote", args=[version.pk]),
            {"reason": "race"},
            content_type="application/json",
        )
        return response.status_code, response.json()

    outcomes = _race(promote, [a, b])
    codes = sorted(code for code, _ in outcomes)
    assert codes in ([200, 200], [200, 409]), outcomes
    for code, body in outcomes:
        if code == 409:
            assert "promoted at the same moment" in str(body)
    assert ModelVersion.objects.filter(status="production").count() == 1

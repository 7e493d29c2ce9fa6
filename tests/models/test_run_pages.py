"""Training runs and candidates as a model admin meets them: the run form (production's
recipe, overridable), the run's page (progress, the paired comparison on the same
images, the gate's verdict), archiving, and rollback offered only when possible."""

from __future__ import annotations

import numpy as np
import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.models import services
from apps.models.datasets import create_snapshot, import_reference_dataset
from apps.models.models import ModelVersion, TrainingRun
from ml.models.metrics import EvaluationResult
from ml.models.paired import paired_bootstrap
from tests.conftest import IMAGES
from tests.models.test_registry import make_variant

CLASSES = ("covid19", "normal", "pneumonia")


def _calls(truth, share, seed):
    rng = np.random.default_rng(seed)
    return [CLASSES[(CLASSES.index(c) + 1) % 3] if rng.random() < share else c for c in truth]


def _done_run(candidate, production, *, n, production_share=0.1, candidate_share=0.4):
    """A finished run as the training runner leaves it: the candidate and production scored on
    the same ``n`` images (the candidate worse when it errs more)."""
    truth = [CLASSES[i % 3] for i in range(n)]
    paired = paired_bootstrap(
        truth,
        _calls(truth, production_share, 1),
        _calls(truth, candidate_share, 2),
        CLASSES,
        n_resamples=300,
    )
    macro_f1 = paired.figure("macro_f1")
    assert macro_f1 is not None
    comparison = {
        "test_images": n,
        "candidate": EvaluationResult(macro_f1=macro_f1.b, n=n).to_json(),
        "production": EvaluationResult(macro_f1=macro_f1.a, n=n).to_json(),
        "production_version": production.pk,
        "paired": paired.to_json(),
    }
    refusals = services.auto_promotion_refusals(comparison, production)
    comparison["gate"] = {
        "passed": not refusals,
        "reasons": refusals,
        "summary": services.gate_summary(comparison, refusals),
    }
    return TrainingRun.objects.create(
        snapshot=create_snapshot(),
        status=TrainingRun.Status.DONE,
        config={"architecture": "efficientnet_lite0", "epochs": 60},
        progress={
            "epoch": 12,
            "epochs": 60,
            "batch": 9,
            "batches": 9,
            "epochs_run": 12,
            "best_epoch": 7,
        },
        model_version=candidate,
        comparison=comparison,
    )


@pytest.fixture
def candidate(production_model, tmp_path):
    import_reference_dataset(IMAGES / "manifest.csv", "generic")  # for the runs' snapshots
    return services.register_artifact(artifact_path=make_variant(tmp_path / "c.keras", b"c"))


def test_the_run_page_shows_the_paired_comparison_on_the_same_images(
    login, model_admin, production_model, candidate
):
    run = _done_run(candidate, production_model, n=150)
    page = login(model_admin).get(reverse("registry:run", args=[run.pk])).content.decode()
    assert "stopped early at epoch 12 of 60 (best 7)" in page
    assert "100%" in page
    assert 'data-measured-on="150"' in page
    assert "both on the same 150 images" in page
    # The candidate errs four times as often: worse beyond chance, flagged and refused.
    assert 'data-metric="macro_f1" data-verdict="worse"' in page
    assert "worse beyond chance" in page
    assert 'data-auto-gate="refused"' in page
    assert "Macro-F1 is worse beyond chance" in page
    assert "efficientnet_lite0" in page  # the recipe it was trained with
    compare = reverse("registry:compare") + f"?a={production_model.pk}&amp;b={candidate.pk}"
    assert compare in page


def test_the_compare_page_uses_the_runs_paired_figures_either_way_round(
    login, model_admin, production_model, candidate
):
    _done_run(candidate, production_model, n=150)
    client = login(model_admin)
    url = reverse("registry:compare")
    page = client.get(url, {"a": production_model.pk, "b": candidate.pk}).content.decode()
    assert "Both measured on the same 150 images" in page
    assert 'data-metric="macro_f1" data-verdict="worse"' in page
    assert 'class="num worse"' in page
    swapped = client.get(url, {"a": candidate.pk, "b": production_model.pk}).content.decode()
    assert 'data-metric="macro_f1" data-verdict="better"' in swapped


def test_too_few_images_get_no_verdict_and_the_gate_says_why(
    login, model_admin, production_model, candidate
):
    run = _done_run(candidate, production_model, n=3)
    assert run.comparison["gate"]["passed"] is False
    assert run.comparison["gate"]["reasons"][0].startswith(
        "Only 3 test images: too few to tell the candidate from production"
    )
    client = login(model_admin)
    for url in (
        reverse("registry:run", args=[run.pk]),
        reverse("registry:version", args=[candidate.pk]),
        reverse("registry:promote", args=[candidate.pk]),
    ):
        page = client.get(url).content.decode()
        assert "data-too-few" in page, url
        assert "3 images are too few to call any difference better or worse" in page
        assert 'class="num worse"' not in page
        assert 'class="num better"' not in page


def test_a_candidate_can_be_archived_and_leaves_the_list(
    login, model_admin, production_model, candidate
):
    client = login(model_admin)
    response = client.post(reverse("registry:archive", args=[candidate.pk]))
    assert response.status_code == 302
    candidate.refresh_from_db()
    assert candidate.status == "archived"
    event = AuditEvent.objects.get(action="model.archive")
    assert (event.actor, event.before, event.after["status"]) == (
        model_admin,
        {"status": "candidate"},
        "archived",
    )
    index = client.get(reverse("registry:index")).content.decode()
    assert f'data-version="{candidate.pk}"' not in index
    assert "Show 1 archived candidate" in index
    shown = client.get(reverse("registry:index"), {"archived": "1"}).content.decode()
    assert f'data-version="{candidate.pk}" data-status="archived"' in shown
    # It is still a version one may promote, and never a rollback target.
    assert services.rollback_target() is None
    # The serving version cannot be archived: refused, nothing written.
    client.post(reverse("registry:archive", args=[production_model.pk]))
    production_model.refresh_from_db()
    assert production_model.status == "production"
    assert AuditEvent.objects.filter(action="model.archive").count() == 1


def test_rollback_is_offered_only_when_there_is_an_earlier_production_version(
    login, model_admin, production_model, candidate
):
    client = login(model_admin)
    index = client.get(reverse("registry:index")).content.decode()
    assert "data-no-rollback" in index
    assert "Roll back production" not in index
    services.promote(version=candidate, actor=model_admin, gate=False)
    index = client.get(reverse("registry:index")).content.decode()
    assert f'data-rollback-to="{production_model.pk}"' in index
    client.post(reverse("registry:rollback"), {"task": "classification"})
    assert ModelVersion.objects.production() == production_model


def test_the_run_form_starts_productions_recipe_with_the_admins_changes(
    login, settings, model_admin, production_model
):
    import_reference_dataset(IMAGES / "manifest.csv", "generic")
    client = login(model_admin)
    index = client.get(reverse("registry:index")).content.decode()
    assert "data-recipe" in index
    assert f"as production #{production_model.pk}" in index
    assert 'name="epochs" value="60"' in index  # the platform's run length, by default

    response = client.post(reverse("registry:start-training"), {"epochs": "0"})
    assert response.status_code == 302
    assert not TrainingRun.objects.exists()  # refused, nothing written
    assert "No run was started: epochs" in client.get(response.url).content.decode()

    response = client.post(reverse("registry:start-training"), {"epochs": "3", "seed": "7"})
    run = TrainingRun.objects.get()
    assert response.url == reverse("registry:run", args=[run.pk])
    assert (run.config["epochs"], run.config["seed"]) == (3, 7)
    assert run.config["architecture"] == production_model.card["architecture"]
    page = client.get(response.url).content.decode()
    assert "data-recipe" in page
    assert "Nothing logged yet" in page

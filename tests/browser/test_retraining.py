"""The learning loop in a real browser, against a live server and a real training
worker: a model admin starts a retraining from the web, watches the run finish, reads
the candidate against production on the same images (how many shown), promotes it and
rolls back."""

from __future__ import annotations

import pytest

from apps.accounts.models import AuditEvent
from apps.models.datasets import import_reference_dataset
from apps.models.models import ModelVersion, TrainingRun
from tests.browser.conftest import assert_accessible, log_in, screenshot
from tests.conftest import IMAGES
from tests.factories import PASSWORD
from tests.workers import start_worker, stop_worker, wait_for_log

pytestmark = [pytest.mark.browser, pytest.mark.worker]

# The retrained tiny model after one epoch need not match the tiny production on the
# shortcut tests; this test is about the loop (the gate has tests of its own).
LENIENT_GATE = {
    "CXR_GATE_BLANKED_ACC_TOLERANCE": "1",
    "CXR_GATE_LUNG_MASS_TOLERANCE": "1",
    "CXR_GATE_HELD_OUT_TOLERANCE": "1",
}


@pytest.fixture
def training_worker(tmp_path, media_root):
    log_path = tmp_path / "training-worker.log"
    process = start_worker(
        log_path=log_path, media_root=media_root, queues="training", extra_env=LENIENT_GATE
    )
    try:
        wait_for_log(log_path, "ready.", process)
        yield process, log_path
    finally:
        stop_worker(process)


def test_model_admin_retrains_compares_on_the_same_images_promotes_and_rolls_back(
    browser_page, live_server, settings, model_admin, production_model, training_worker
):
    for name, value in LENIENT_GATE.items():
        setattr(settings, name, float(value))
    settings.CXR_TRAINING_EPOCHS = 3
    import_reference_dataset(IMAGES / "manifest.csv", "generic")
    page = browser_page
    page.on("dialog", lambda dialog: dialog.accept())  # the rollback's confirmation
    log_in(page, live_server.url, model_admin.username, PASSWORD)
    page.goto(f"{live_server.url}/registry/")
    assert page.locator("[data-no-rollback]").is_visible()  # nothing served before

    # Start a run with production's recipe, one epoch instead of the platform's three.
    page.locator("[data-start-training] summary").click()
    assert page.locator("[data-start-training] [data-recipe]").is_visible()
    page.get_by_label("Epochs").fill("1")
    page.get_by_role("button", name="Start a training run").click()
    page.wait_for_url("**/registry/training-runs/*/")
    run = TrainingRun.objects.get()
    assert run.config["epochs"] == 1
    # The page follows the run live until it is done (live.js), without a reload.
    page.locator("[data-auto-gate]").wait_for(timeout=180_000)
    run.refresh_from_db()
    assert run.status == "done", run.error
    candidate = run.model_version
    n = run.comparison["test_images"]
    assert page.locator("[data-progress-text]").inner_text() == "ran all 1 epochs (best 1)"
    assert page.locator("[data-run-status]").inner_text() == "done"
    assert page.locator(f'[data-measured-on="{n}"]').is_visible()
    assert f"both on the same {n} images" in page.content()
    # The fixture's test split is 3 images: too few for a verdict, and the gate says so.
    assert page.locator("[data-too-few]").is_visible()
    assert page.locator('[data-auto-gate="refused"]').is_visible()
    assert f"Only {n} test images" in page.locator("[data-auto-gate]").inner_text()
    assert page.locator("td.better, td.worse").count() == 0
    assert_accessible(page)
    screenshot(page, "admin-training-run")

    page.locator("[data-compare-link]").click()
    page.wait_for_url("**/registry/compare/?a=*")
    assert f"Both measured on the same {n} images" in page.content()
    assert page.locator("[data-too-few]").is_visible()
    assert_accessible(page)
    screenshot(page, "admin-compare-same-images")

    # A model admin may still promote by hand: the shortcut gate (lenient here) passes.
    page.get_by_role("link", name=f"Promote #{run.model_version_id}…").click()
    assert page.locator("[data-too-few]").is_visible()
    page.get_by_role("button", name="Promote to production").click()
    page.wait_for_url("**/registry/")
    assert ModelVersion.objects.production() == candidate
    rollback = page.locator(f'[data-rollback-to="{production_model.pk}"]')
    assert rollback.is_visible()
    rollback.click()
    page.wait_for_url("**/registry/")
    assert page.get_by_text(f"Rolled back: {production_model.name} serves again").is_visible()
    assert ModelVersion.objects.production() == production_model
    actions = list(
        AuditEvent.objects.filter(actor=model_admin).order_by("pk").values_list("action", flat=True)
    )
    assert [a for a in actions if a.startswith(("training.", "model."))] == [
        "training.start",
        "training.done",
        "model.promote",
        "model.promote",
        "model.rollback",
    ]
    # The run's notification links to its page.
    assert page.locator(f'[data-run-link][href="/registry/training-runs/{run.pk}/"]').count()

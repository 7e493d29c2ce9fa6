"""Deconvolution maps and retries in a real browser, against a live server and a real
worker: a clinician asks
for a deconvolution map on the case page and sees it; a failed classification is
retried from the page and its result arrives without a reload."""

from __future__ import annotations

import pytest

from apps.accounts.models import AuditEvent
from apps.cases import services
from apps.cases.models import Prediction
from apps.explain.models import Explanation
from tests.browser.conftest import assert_accessible, log_in, screenshot
from tests.conftest import upload_of
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SETTLED = (
    "() => document.querySelector('article[data-image] img.heat[data-method={method}]')"
    " && !document.querySelector('[data-live-pending]')"
)


def test_clinician_requests_a_deconvolution_map_from_the_case_page_and_sees_it(
    browser_page, live_server, clinician, production_model, worker
):
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    page = browser_page
    log_in(page, live_server.url, clinician.username, PASSWORD)
    page.goto(f"{live_server.url}/cases/{case.pk}/")
    page.wait_for_function(SETTLED.format(method="gradcam"), timeout=180_000, polling=500)
    page.evaluate("window.__sameDocument = true")

    article = page.locator("article[data-image]").first
    article.get_by_label("Another explanation method").select_option(label="Deconvolution")
    article.get_by_role("button", name="Explain").click()
    page.locator("article[data-image] [role=tab][data-method=deconvnet]").wait_for()
    page.wait_for_function(SETTLED.format(method="deconvnet"), timeout=180_000, polling=500)
    assert page.evaluate("window.__sameDocument") is True  # arrived without a reload

    article = page.locator("article[data-image]").first
    tab = article.get_by_role("tab", name="Deconvolution")
    assert tab.get_attribute("aria-selected") == "true"
    layer = article.locator("img.heat[data-method=deconvnet]")
    assert layer.is_visible()
    # The map really loaded: the model's input size (the tiny test model: 128 px).
    size = production_model.card["preprocessing"]["input_size"]
    assert layer.evaluate("img => img.decode().then(() => img.naturalWidth)") == size
    panel = article.locator("[role=tabpanel][data-method=deconvnet]")
    text = panel.inner_text()
    assert "Deconvolution for" in text
    assert "Faithfulness: deletion AUC" in text
    assert "of this map lies on the lungs" in text

    explanation = Explanation.objects.get(image__case=case, method="deconvnet")
    assert explanation.status == "done"
    assert explanation.requested_by == clinician
    assert explanation.params["activations"] == "deconvnet"
    assert 0.0 <= explanation.scores["deletion_auc"] <= 1.0
    # The raw map and the overlay are a click away, for the owner.
    with page.expect_download() as download:
        panel.get_by_role("link", name="raw map (.npy)").click()
    assert download.value.suggested_filename == f"explanation-{explanation.pk}.npy"
    assert AuditEvent.objects.filter(action="explanation.request", actor=clinician).exists()

    # Switching tabs shows one layer at a time.
    article.get_by_role("tab", name="Grad-CAM").click()
    assert layer.is_hidden()
    article.get_by_role("tab", name="Deconvolution").click()
    assert layer.is_visible()
    assert_accessible(page)
    screenshot(page, "clinician-deconvolution")


def test_clinician_retries_a_failed_classification_from_the_case_page(
    browser_page, live_server, clinician, production_model, request
):
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    prediction.mark_running()
    prediction.mark_failed("No result within the 120 s time limit: the worker stopped.")
    request.getfixturevalue("worker")  # takes the first message: the job failed, it stays so

    page = browser_page
    log_in(page, live_server.url, clinician.username, PASSWORD)
    page.goto(f"{live_server.url}/cases/{case.pk}/")
    alert = page.locator("article[data-image] p.error[role=alert]")
    assert "Classification failed: No result within the 120 s time limit" in alert.inner_text()
    assert_accessible(page)
    page.get_by_role("button", name="Retry classification").click()
    page.wait_for_load_state()
    assert page.get_by_text("Classification queued again").is_visible()
    page.wait_for_function(SETTLED.format(method="gradcam"), timeout=180_000, polling=500)
    assert page.locator("strong[data-label]").count() == 1
    assert page.get_by_role("button", name="Retry classification").count() == 0
    prediction.refresh_from_db()
    assert (prediction.status, prediction.attempts) == ("done", 2)
    assert AuditEvent.objects.get(action="prediction.retry").actor == clinician
    screenshot(page, "clinician-retried-classification")

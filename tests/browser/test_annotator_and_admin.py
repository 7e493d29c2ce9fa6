"""Annotators and model admins in a real browser."""

import pytest

from apps.accounts.models import AuditEvent
from apps.cases import services as case_services
from apps.cases.access import image_ref
from apps.cases.models import Prediction
from apps.models.models import ModelVersion
from cxrplatform.jobs import run_job_now
from tests.browser.conftest import assert_accessible, log_in, screenshot
from tests.conftest import upload_of
from tests.factories import PASSWORD
from tests.models.test_registry import make_variant

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
# Waits for a (lazily loaded) image and answers its width; rejects if it fails to load.
LOADED_WIDTH = "img => img.decode().then(() => img.naturalWidth)"


@pytest.fixture
def predicted_images(clinician, production_model):
    images = []
    for name in ("2168a917.jpg", "IM-0117-0001.jpeg"):
        case = case_services.create_case(
            owner=clinician, files=[upload_of(name)], patient_ref="SECRET-REF-7"
        )
        prediction = Prediction.objects.get(image__case=case)
        run_job_now(Prediction, prediction.pk)
        images.append(prediction.image)
    return images


def test_annotator_confirms_with_the_keyboard_and_skips(
    browser_page, live_server, annotator, predicted_images
):
    page = browser_page
    log_in(page, live_server.url, annotator.username, PASSWORD)
    page.get_by_role("link", name="Labelling queue", exact=True).click()
    assert "SECRET-REF-7" not in page.content()
    assert_accessible(page)
    # The image is named by its reference, never its id.
    first = page.locator("article[data-image]").get_attribute("data-image")
    assert first in {image_ref(image) for image in predicted_images}
    screenshot(page, "annotator-queue")
    page.keyboard.press("s")  # skip: the other image comes up
    page.wait_for_url("**/cases/labelling/?after=*")
    second = page.locator("article[data-image]").get_attribute("data-image")
    assert second != first
    assert f"after={first}" in page.url
    page.keyboard.press("3")  # the third class: normal
    page.wait_for_url("**/cases/labelling/")
    (labelled,) = (image for image in predicted_images if image_ref(image) == second)
    labelled.refresh_from_db()
    assert labelled.confirmed_label == "normal"
    assert AuditEvent.objects.filter(action="label.create", actor=annotator).count() == 1
    assert page.locator("article[data-image]").get_attribute("data-image") == first


def _metrics(macro_f1: float, covid_recall: float) -> dict:
    per_class = {
        name: {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 10, "roc_auc": 0.9}
        for name in ("covid19", "pneumonia", "normal")
    }
    per_class["covid19"]["recall"] = covid_recall
    return {
        "n": 30,
        "accuracy": 0.8,
        "macro_f1": macro_f1,
        "per_class": per_class,
        "roc_auc_macro": 0.9,
        "ece": 0.05,
        "confusion_matrix": {
            "labels": ["covid19", "pneumonia", "normal"],
            "matrix": [[8, 1, 1], [1, 8, 1], [1, 1, 8]],
        },
        "curves": {
            "roc": {
                name: {"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.8, 1.0], "auc": 0.9}
                for name in ("covid19", "pneumonia", "normal")
            },
            "calibration": {
                "bins": 15,
                "mean_confidence": [0.5, 0.9],
                "accuracy": [0.4, 0.85],
                "count": [10, 20],
            },
            "confidence_histogram": {
                "edges": [i / 15 for i in range(16)],
                "counts": [0] * 7 + [10] + [0] * 5 + [20, 0],
            },
        },
    }


def test_model_admin_compares_two_versions_and_promotes_one(
    browser_page, live_server, model_admin, production_model, tmp_path
):
    from apps.models.services import register_artifact

    candidate = register_artifact(artifact_path=make_variant(tmp_path / "c.keras", b"c"))
    ModelVersion.objects.filter(pk=production_model.pk).update(metrics=_metrics(0.70, 0.90))
    ModelVersion.objects.filter(pk=candidate.pk).update(metrics=_metrics(0.75, 0.85))
    page = browser_page
    log_in(page, live_server.url, model_admin.username, PASSWORD)
    page.get_by_role("link", name="Model registry").first.click()
    assert_accessible(page)
    page.get_by_label("Compare version").select_option(str(production_model.pk))
    page.get_by_label("with").select_option(str(candidate.pk))
    page.get_by_role("button", name="Compare side by side").click()
    page.wait_for_url("**/registry/compare/?a=*")
    table = page.locator("table[data-compare]")
    macro = table.locator("tr", has_text="macro-F1")
    assert macro.locator("td").all_inner_texts()[:3] == ["0.700", "0.750", "+0.050"]
    covid_recall = table.locator("tr", has_text="COVID-19 recall")
    assert "-0.050" in covid_recall.locator("td").nth(2).inner_text()
    # Each was measured on its own test split: the differences are shown, never called
    # better or worse (a run's candidate and production are, tests/browser/test_retraining).
    assert page.locator("[data-not-paired]").is_visible()
    assert table.locator("td.better, td.worse").count() == 0
    # Both sides draw their plots from the stored metrics: confusion matrix, ROC and
    # calibration per version (training animations are not stored for these versions).
    plots = page.locator(".compare img")
    assert plots.count() == 6
    assert page.locator(".compare img[data-plot='calibration']").count() == 2
    for index in range(6):
        plots.nth(index).scroll_into_view_if_needed()
        assert plots.nth(index).evaluate(LOADED_WIDTH) > 100
    assert_accessible(page)
    screenshot(page, "admin-compare")

    page.get_by_role("link", name=f"Promote #{candidate.pk}…").click()
    assert page.locator("[data-not-paired]").is_visible()
    assert page.locator("td.better, td.worse").count() == 0
    screenshot(page, "admin-promote-confirm")
    page.get_by_role("button", name="Promote to production").click()
    page.wait_for_url("**/registry/")
    assert page.locator(f'tr[data-version="{candidate.pk}"]').get_attribute("data-status") == (
        "production"
    )
    assert ModelVersion.objects.get(status="production") == candidate
    assert AuditEvent.objects.filter(action="model.promote", actor=model_admin).exists()
    screenshot(page, "admin-registry")

    # The version page: per-class table, confusion matrix, ROC and calibration plots.
    page.get_by_role("link", name=f"#{candidate.pk} {candidate.name}").click()
    images = page.locator(".plots img")
    assert images.count() == 3
    for index in range(3):
        images.nth(index).scroll_into_view_if_needed()
        assert images.nth(index).evaluate(LOADED_WIDTH) > 100
    assert page.locator("table.confusion td.diagonal").all_inner_texts() == ["8", "8", "8"]
    assert_accessible(page)
    screenshot(page, "admin-version")

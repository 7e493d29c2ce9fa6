"""Annotators and model admins in a real browser."""

import pytest

from apps.accounts.models import AuditEvent
from apps.cases import services as case_services
from apps.cases.inference import run_prediction
from apps.cases.models import CaseImage, Prediction
from apps.models.models import ModelVersion
from tests.browser.conftest import log_in, screenshot
from tests.conftest import upload_of
from tests.factories import PASSWORD
from tests.models.test_registry import make_variant

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def predicted_images(clinician, production_model):
    images = []
    for name in ("2168a917.jpg", "IM-0117-0001.jpeg"):
        case = case_services.create_case(
            owner=clinician, files=[upload_of(name)], patient_ref="SECRET-REF-7"
        )
        prediction = Prediction.objects.get(image__case=case)
        run_prediction(prediction_id=prediction.pk)
        images.append(prediction.image)
    return images


def test_annotator_confirms_with_the_keyboard_and_skips(
    browser_page, live_server, annotator, predicted_images
):
    page = browser_page
    log_in(page, live_server.url, annotator.username, PASSWORD)
    page.get_by_role("link", name="Labelling queue", exact=True).click()
    assert "SECRET-REF-7" not in page.content()
    first = int(page.locator("article[data-image]").get_attribute("data-image"))
    screenshot(page, "annotator-queue")
    page.keyboard.press("s")  # skip: the other image comes up
    page.wait_for_url("**/cases/labelling/?after=*")
    second = int(page.locator("article[data-image]").get_attribute("data-image"))
    assert second != first
    page.keyboard.press("3")  # the third class: normal
    page.wait_for_url("**/cases/labelling/")
    labelled = CaseImage.objects.get(pk=second)
    assert labelled.confirmed_label == "normal"
    assert AuditEvent.objects.filter(action="label.create", actor=annotator).count() == 1
    assert int(page.locator("article[data-image]").get_attribute("data-image")) == first


def test_model_admin_compares_and_promotes_with_confirmation(
    browser_page, live_server, model_admin, production_model, tmp_path
):
    from apps.models.services import register_artifact

    candidate = register_artifact(artifact_path=make_variant(tmp_path / "c.keras", b"c"))
    ModelVersion.objects.filter(pk=production_model.pk).update(metrics={"macro_f1": 0.70})
    ModelVersion.objects.filter(pk=candidate.pk).update(metrics={"macro_f1": 0.75})
    page = browser_page
    log_in(page, live_server.url, model_admin.username, PASSWORD)
    page.get_by_role("link", name="Model registry").first.click()
    page.get_by_role("link", name=f"#{candidate.pk} {candidate.name}").click()
    page.get_by_role("link", name="Promote…").click()
    better = page.locator("td.better")
    assert better.count() == 1
    assert better.inner_text() == "0.050"
    screenshot(page, "admin-promote-confirm")
    page.get_by_role("button", name="Promote to production").click()
    page.wait_for_url("**/registry/")
    assert page.locator(f'tr[data-version="{candidate.pk}"]').get_attribute("data-status") == (
        "production"
    )
    assert ModelVersion.objects.get(status="production") == candidate
    assert AuditEvent.objects.filter(action="model.promote", actor=model_admin).exists()
    screenshot(page, "admin-registry")

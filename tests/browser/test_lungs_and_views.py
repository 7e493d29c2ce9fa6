"""Lung fields in the case viewer and the lateral-view refusal, in a real browser
against a live server and a real worker (the bundled lung segmenter included)."""

import re

import pytest

from apps.cases.models import Case
from tests.browser.conftest import assert_accessible, log_in, screenshot
from tests.conftest import IMAGES
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_clinician_toggles_the_lung_outline_and_reads_the_share_on_the_lungs(
    browser_page, live_server, clinician, production_model, worker
):
    page = browser_page
    log_in(page, live_server.url, clinician.username, PASSWORD)
    page.goto(f"{live_server.url}/cases/new/")
    page.get_by_label("Chest X-ray images (PNG, JPEG or DICOM)").set_input_files(
        [str(IMAGES / "2168a917.jpg")]
    )
    page.get_by_role("button", name="Upload and classify").click()
    page.wait_for_url(re.compile(r"/cases/\d+/$"))

    # The live page fills in the prediction, the lung fields and the Grad-CAM.
    page.wait_for_function(
        "() => document.querySelector('.viewer img.heat[data-method=gradcam]')"
        " && document.querySelector('[data-lung-toggle]')"
        " && !document.querySelector('[data-live-pending]')",
        timeout=180_000,
        polling=500,
    )
    article = page.locator("article[data-image]").first
    assert "Lung fields found:" in article.inner_text()
    share = article.locator(".lung-mass").first
    assert re.fullmatch(r"\d{1,3}% of this map lies on the lungs\.", share.inner_text().strip())

    outline = article.locator("img.lungs[data-lung-outline]")
    assert outline.is_hidden()
    article.get_by_label("Show lung outline").check()
    assert outline.is_visible()
    # The outline PNG is the image's size, laid over it (decoded, so it really loaded).
    case = Case.objects.get(owner=clinician)
    image = case.images.get()
    assert outline.evaluate("img => img.decode().then(() => img.naturalWidth)") == image.width
    assert_accessible(page)
    screenshot(page, "clinician-lung-outline")

    # The choice is kept: after a reload the outline is still drawn.
    page.reload()
    outline = page.locator("article[data-image] img.lungs[data-lung-outline]").first
    assert outline.is_visible()
    page.get_by_label("Show lung outline").uncheck()
    assert outline.is_hidden()


def test_uploading_a_lateral_view_shows_the_refusal_next_to_the_file(
    browser_page, live_server, clinician
):
    page = browser_page
    log_in(page, live_server.url, clinician.username, PASSWORD)
    page.goto(f"{live_server.url}/cases/new/")
    page.get_by_label("Chest X-ray images (PNG, JPEG or DICOM)").set_input_files(
        [str(IMAGES / "lateral" / "000002-11-b.jpg")]
    )
    page.get_by_role("button", name="Upload and classify").click()
    rejected = page.locator("[data-file-list] li.rejected")
    rejected.wait_for()
    assert rejected.get_attribute("data-file") == "000002-11-b.jpg"
    assert (
        "this looks like a lateral view; upload a frontal (PA/AP) chest X-ray."
        in rejected.inner_text()
    )
    assert Case.objects.count() == 0
    assert_accessible(page)
    screenshot(page, "clinician-lateral-refused")

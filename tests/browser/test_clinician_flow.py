"""A clinician in a real browser, against a live server and a real worker."""

import pytest
from PIL import Image

from apps.cases.models import Case
from tests.browser.conftest import log_in, screenshot
from tests.conftest import IMAGES
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_clinician_uploads_in_the_browser_and_sees_prediction_and_heatmap(
    browser_page, live_server, clinician, production_model, worker
):
    page = browser_page
    log_in(page, live_server.url, clinician.username, PASSWORD)
    assert page.url.endswith("/cases/")
    page.get_by_role("link", name="New case").first.click()
    page.get_by_label("Chest X-ray images (PNG or JPEG)").set_input_files(
        [str(IMAGES / "2168a917.jpg"), str(IMAGES / "IM-0117-0001.jpeg")]
    )
    page.get_by_label("Pseudonymous patient reference").fill("PSEUDO-BROWSER-1")
    page.get_by_role("button", name="Upload and classify").click()

    case = Case.objects.get(owner=clinician)
    assert page.url.endswith(f"/cases/{case.pk}/")
    # The page polls until both images are classified and explained.
    page.wait_for_function(
        "document.querySelectorAll('figure[data-method=gradcam][data-status=done]').length == 2",
        timeout=180_000,
        polling=1000,
    )
    labels = page.locator("strong[data-label]").all_inner_texts()
    assert len(labels) == 2
    assert set(labels) <= {"COVID-19", "Other pneumonia", "Normal"}
    overlay = page.locator("figure[data-method=gradcam] img").first
    assert overlay.evaluate("img => img.complete && img.naturalWidth") > 128
    path = screenshot(page, "clinician-case")
    with Image.open(path) as shot:
        assert shot.width >= 1200


def test_pages_of_other_roles_are_refused_in_the_browser(browser_page, live_server, clinician):
    page = browser_page
    log_in(page, live_server.url, clinician.username, PASSWORD)
    for path in ("/cases/labelling/", "/registry/"):
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 403
        assert page.get_by_role("heading", name="Not allowed").is_visible()
    screenshot(page, "clinician-refused")

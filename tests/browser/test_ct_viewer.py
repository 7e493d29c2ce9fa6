"""A clinician uploads CT slices in a real browser, a real worker segments them (the tiny
real CT model), and the case page shows the mask layers, the share of the lung affected,
the strip of slices and Grad-CAM of the infection output."""

import re

import pytest

from apps.cases.models import Case
from tests.browser.conftest import assert_accessible, log_in, screenshot
from tests.ct_uploads import CT_SLICE, CT_SLICE_2
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_clinician_uploads_ct_slices_and_reads_masks_and_percent_affected(
    browser_page, live_server, clinician, production_model, ct_production_model, worker
):
    page = browser_page
    log_in(page, live_server.url, clinician.username, PASSWORD)
    page.goto(f"{live_server.url}/cases/new/")
    page.get_by_label("Chest CT slices").check()
    page.get_by_label("Chest X-ray images (PNG, JPEG or DICOM) or CT slices").set_input_files(
        [str(CT_SLICE), str(CT_SLICE_2)]
    )
    page.get_by_role("button", name="Upload and segment").click()
    page.wait_for_url(re.compile(r"/cases/\d+/$"))
    case = Case.objects.get(owner=clinician)
    assert case.modality == "ct"

    # The live page fills in the masks, the figures and the Grad-CAM of each slice.
    page.wait_for_function(
        "() => document.querySelectorAll('[data-percent-affected]').length === 2"
        " && document.querySelectorAll('img.ct-heat').length === 2"
        " && !document.querySelector('[data-live-pending]')",
        timeout=180_000,
        polling=500,
    )
    first, second = case.images.order_by("pk")
    article = page.locator(f"article[data-slice='{first.pk}']")
    assert article.is_visible()
    assert page.locator(f"article[data-slice='{second.pk}']").is_hidden()  # the strip shows one
    percent = article.locator("[data-percent-affected]")
    assert re.fullmatch(r"\d{1,3}\.\d%", percent.inner_text().strip())
    segmentation = first.latest_segmentation
    assert float(percent.get_attribute("data-percent-affected")) == pytest.approx(
        segmentation.percent_affected
    )
    assert "Ground-glass opacity" in article.inner_text()
    assert ct_production_model.name in article.inner_text()

    # Every layer is drawn over the slice at its size; a toggle hides one.
    for kind in ("ggo", "consolidation", "lung_outline"):
        layer = article.locator(f"img.ct-layer[data-layer='{kind}']")
        assert layer.is_visible(), kind
        assert layer.evaluate("img => img.decode().then(() => img.naturalWidth)") == first.width
    article.get_by_label("Ground-glass opacity").uncheck()
    assert article.locator("img.ct-layer[data-layer='ggo']").is_hidden()
    assert article.locator("img.ct-layer[data-layer='consolidation']").is_visible()
    slider = article.get_by_label("Mask opacity")
    slider.fill("80")
    assert (
        article.locator("img.ct-layer[data-layer='consolidation']").evaluate(
            "img => img.style.opacity"
        )
        == "0.8"
    )
    assert_accessible(page)
    screenshot(page, "clinician-ct-masks")

    # The Grad-CAM tab lays the infection map over the slice instead of the masks.
    article.get_by_role("tab", name=re.compile("Grad-CAM")).click()
    assert article.locator("img.ct-heat").is_visible()
    assert article.locator("img.ct-layer[data-layer='consolidation']").is_hidden()
    assert "Grad-CAM of the infection output" in article.inner_text()
    screenshot(page, "clinician-ct-gradcam")

    # The strip switches slices; the layer choice is kept across slices and reloads.
    page.locator(f"[data-slice-link='{second.pk}']").click()
    other = page.locator(f"article[data-slice='{second.pk}']")
    assert other.is_visible()
    assert article.is_hidden()
    assert other.locator("img.ct-layer[data-layer='ggo']").is_hidden()
    page.reload()
    assert page.locator("article[data-slice] img.ct-layer[data-layer='ggo']").first.is_hidden()

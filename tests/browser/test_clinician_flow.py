"""A clinician in a real browser, against a live server and a real worker."""

import base64
import re

import pytest
from PIL import Image

from apps.cases.models import Case, CaseImage
from apps.explain.models import Explanation
from tests.browser.conftest import assert_accessible, log_in, screenshot
from tests.conftest import IMAGES
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
JPEG = "image/jpeg"

DROP_FILES = """([files]) => {
  const transfer = new DataTransfer();
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.data), c => c.charCodeAt(0));
    transfer.items.add(new File([bytes], f.name, {type: f.type}));
  }
  const zone = document.querySelector('[data-dropzone]');
  zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: transfer, bubbles: true}));
  zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));
}"""


def _file(name: str, data: bytes, content_type: str) -> dict:
    return {"name": name, "data": base64.b64encode(data).decode(), "type": content_type}


def _upload_refuses_the_broken_file(page) -> None:
    """One file chosen with the file picker, two dropped on the drop zone; the server
    refuses the broken one and says so next to it."""
    page.get_by_label("Chest X-ray images (PNG, JPEG or DICOM)").set_input_files(
        [str(IMAGES / "2168a917.jpg")]
    )
    page.evaluate(
        DROP_FILES,
        [
            [
                _file("IM-0117-0001.jpeg", (IMAGES / "IM-0117-0001.jpeg").read_bytes(), JPEG),
                _file("scan.png", b"\x89PNG\r\n\x1a\n not really a png", "image/png"),
            ]
        ],
    )
    assert page.locator("[data-file-list] li").count() == 3
    page.get_by_label("Pseudonymous patient reference").fill("PSEUDO-BROWSER-1")
    page.get_by_role("button", name="Upload and classify").click()

    # The server refuses the broken file; the message sits next to that file.
    rejected = page.locator("[data-file-list] li.rejected")
    rejected.wait_for()
    assert rejected.count() == 1
    assert rejected.get_attribute("data-file") == "scan.png"
    assert "not an image file this platform can read" in rejected.inner_text()
    assert page.locator("[data-progress] progress").evaluate("p => p.value") == 100
    assert Case.objects.count() == 0
    screenshot(page, "clinician-upload-refused")


def _results_arrive_without_a_reload(page) -> None:
    """The page updates itself until both images are classified and explained."""
    page.evaluate("window.__sameDocument = true")
    page.wait_for_function(
        "() => document.querySelectorAll('.viewer img.heat[data-method=gradcam]').length == 2"
        " && !document.querySelector('[data-live-pending]')",
        timeout=180_000,
        polling=500,
    )
    assert page.evaluate("window.__sameDocument") is True
    labels = page.locator("strong[data-label]").all_inner_texts()
    assert len(labels) == 2
    assert set(labels) <= {"COVID-19", "Other pneumonia", "Normal"}


def _viewer_controls_act_on_the_heatmap(first) -> None:
    """Opacity slider and tabs act on the Grad-CAM layer of the first image."""
    layer = first.locator("img.heat[data-method=gradcam]")
    # decode() waits for the layer the live update just inserted to finish loading.
    assert layer.evaluate("img => img.decode().then(() => img.naturalWidth)") == 128
    assert first.locator(".prob-row").count() == 3
    first.get_by_label("Heatmap opacity").fill("80")
    assert layer.evaluate("img => getComputedStyle(img).opacity") == "0.8"
    first.get_by_role("tab", name="Image only").click()
    assert layer.is_hidden()
    first.get_by_role("tab", name="Grad-CAM").click()
    assert layer.is_visible()


def _another_method_arrives_without_a_reload(page, first) -> None:
    """A spinner in the new method's tab until the worker has made it, then the map."""
    first.get_by_label("Another explanation method").select_option("occlusion")
    first.get_by_role("button", name="Explain").click()
    page.locator("article[data-image] >> nth=0 >> [role=tab][data-method=occlusion]").wait_for()
    assert Explanation.objects.filter(method="occlusion").count() == 1
    page.wait_for_function(
        "() => document.querySelector('article[data-image] img.heat[data-method=occlusion]')"
        " && !document.querySelector('[data-live-pending]')",
        timeout=120_000,
        polling=500,
    )
    first = page.locator("article[data-image]").first
    assert (
        first.get_by_role("tab", name="Occlusion sensitivity").get_attribute("aria-selected")
        == "true"
    )
    assert page.evaluate("window.__sameDocument") is True


def test_clinician_uploads_in_the_browser_and_sees_prediction_and_heatmap(
    browser_page, live_server, clinician, production_model, worker
):
    page = browser_page
    log_in(page, live_server.url, clinician.username, PASSWORD)
    assert page.url.endswith("/cases/")
    assert page.get_by_role("heading", name="No cases yet").is_visible()
    page.get_by_role("link", name="New case").first.click()
    assert_accessible(page)
    _upload_refuses_the_broken_file(page)

    page.get_by_role("button", name="Remove scan.png").click()
    page.get_by_role("button", name="Upload and classify").click()
    page.wait_for_url(re.compile(r"/cases/\d+/$"))
    case = Case.objects.get(owner=clinician)
    assert case.images.count() == 2
    assert page.url.endswith(f"/cases/{case.pk}/")

    _results_arrive_without_a_reload(page)
    first = page.locator("article[data-image]").first
    _viewer_controls_act_on_the_heatmap(first)
    _another_method_arrives_without_a_reload(page, first)
    assert_accessible(page)
    path = screenshot(page, "clinician-case")
    with Image.open(path) as shot:
        assert shot.width >= 1200

    # Tablet: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 768, "height": 1024})
    assert page.evaluate("document.documentElement.scrollWidth") <= 768
    screenshot(page, "clinician-case-tablet")

    # The case list shows it done, and the expert label once annotators agree.
    CaseImage.objects.filter(case=case).update(confirmed_label="normal")
    page.goto(f"{live_server.url}/cases/?status=done")
    row = page.locator(f'tr[data-case="{case.pk}"]')
    assert "done" in row.inner_text()
    assert "Normal" in row.inner_text()
    screenshot(page, "clinician-case-list")
    page.goto(f"{live_server.url}/cases/?status=failed")
    assert page.locator("tr[data-case]").count() == 0
    assert page.get_by_text("No case matches these filters.").is_visible()


def test_case_list_status_changes_without_a_reload(
    browser_page, live_server, clinician, production_model, request
):
    """The list is open while the case waits; the worker starts and the row turns done."""
    from apps.cases import services
    from tests.conftest import upload_of

    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    page = browser_page
    log_in(page, live_server.url, clinician.username, PASSWORD)
    row = page.locator(f'tr[data-case="{case.pk}"]')
    assert "processing" in row.inner_text()  # queued; no worker is running yet
    page.evaluate("window.__sameDocument = true")
    request.getfixturevalue("worker")  # now a worker takes the queued prediction
    page.wait_for_function(
        f"() => document.querySelector('tr[data-case=\"{case.pk}\"] .status-done') !== null",
        timeout=120_000,
        polling=500,
    )
    assert page.evaluate("window.__sameDocument") is True
    prediction = case.images.get().predictions.get()
    assert prediction.get_label_display() in row.inner_text()

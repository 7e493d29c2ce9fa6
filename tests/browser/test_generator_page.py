"""The synthetic-image page in a real browser: a model admin picks a version
and a class, the job draws the grid, the page shows it marked SYNTHETIC."""

import pytest

from apps.generator.models import SampleGrid
from cxrplatform.jobs import run_job_now
from tests.browser.conftest import assert_accessible, log_in, screenshot
from tests.factories import PASSWORD
from tests.generator.conftest import gan_tiny_model, generator_version  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
LOADED_WIDTH = "img => img.decode().then(() => img.naturalWidth)"


def test_model_admin_makes_a_synthetic_grid(
    browser_page,
    live_server,
    model_admin,
    generator_version,  # noqa: F811 - fixture
):
    page = browser_page
    log_in(page, live_server.url, model_admin.username, PASSWORD)
    page.get_by_role("link", name="Synthetic images").click()
    page.wait_for_url("**/generator/")
    assert_accessible(page)
    page.get_by_label("Generator version").select_option(str(generator_version.pk))
    page.get_by_label("Class", exact=True).select_option("covid19")
    page.get_by_label("Samples", exact=True).select_option("8")
    page.get_by_label("Seed").fill("3")
    page.get_by_role("button", name="Make a grid").click()
    page.wait_for_url("**/generator/grids/*/")
    grid = SampleGrid.objects.get()
    assert (grid.label, grid.n, grid.seed, grid.status) == ("covid19", 8, 3, "pending")
    run_job_now(SampleGrid, grid.pk)  # what the explain-queue worker runs
    page.get_by_role("link", name="Reload this page").click()
    image = page.locator("img[data-grid-image]")
    assert image.evaluate(LOADED_WIDTH) > 0
    assert "SYNTHETIC" in (image.get_attribute("alt") or "")
    assert page.get_by_text("the platform refuses it as an upload").is_visible()
    assert_accessible(page)
    screenshot(page, "generator-grid")

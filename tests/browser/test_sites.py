"""A model admin in a real browser: opens a site's local validation, applies an operating
point for that site, and the site's next upload is labelled at it, the case page saying
which point made the label."""

from __future__ import annotations

import re

import pytest

from apps.cases.models import Case, Prediction
from apps.sites.models import SiteOperatingPoint
from cxrplatform.jobs import run_job_now
from tests.browser.conftest import assert_accessible, log_in, screenshot
from tests.conftest import IMAGES
from tests.factories import PASSWORD
from tests.sites import conftest as sites_fixtures

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
# The sites tests' fixtures: a site, its clinician, labelled predicted images.
site_a = sites_fixtures.site_a
clinician_a = sites_fixtures.clinician_a
labelled = sites_fixtures.labelled

# At site A the model calls COVID-19 films normal (tests/sites/test_operating_point.py):
# only a normal offset of -2 finds them, and the normals stay normal there.
MISSED_COVID = [("covid19", (0.13, 0.02, 0.85))] * 8
CLEAR_NORMAL = [("normal", (0.01, 0.01, 0.98))] * 8
# A film the tiny model calls normal (COVID-19 0.15, normal 0.81): COVID-19 at the point.
FILM = "00001280_004.jpg"


def test_an_applied_site_point_labels_the_sites_next_upload(
    browser_page, live_server, site_a, clinician_a, model_admin, production_model, labelled
):
    labelled(clinician_a, production_model, MISSED_COVID + CLEAR_NORMAL)
    page = browser_page
    log_in(page, live_server.url, model_admin.username, PASSWORD)

    # The study: 16 labelled images, COVID-19 sensitivity 0 at the model's own point.
    page.goto(f"{live_server.url}/sites/{site_a.pk}/models/{production_model.pk}/validation/")
    assert page.locator("[data-study-n]").get_attribute("data-study-n") == "16"
    sensitivity = page.locator('[data-figure="covid19_sensitivity"] [data-site] [data-value]')
    assert sensitivity.get_attribute("data-value") == "0.0000"
    assert_accessible(page)

    # Propose COVID-19 sensitivity >= 0.90, check the figures, apply it for site A.
    page.get_by_role("link", name="site operating point").click()
    page.get_by_label("Target:", exact=True).select_option("covid19_sensitivity")
    page.get_by_label("Goal:", exact=True).fill("0.9")
    page.get_by_role("button", name="Propose").click()
    assert page.locator("[data-reached]").get_attribute("data-reached") == "yes"
    assert "normal -2.00" in page.locator("[data-offsets]").inner_text()
    page.get_by_role("button", name=f"Apply for {site_a.name} only").click()
    assert page.locator("[data-active-point]").get_attribute("data-active-point") == "1"
    point = SiteOperatingPoint.objects.get(site=site_a, active=True)
    assert point.number == 1
    screenshot(page, "site-operating-point-applied")

    # The site's clinician uploads a film; the prediction runs (here, not on a worker).
    page.context.clear_cookies()
    log_in(page, live_server.url, clinician_a.username, PASSWORD)
    page.goto(f"{live_server.url}/cases/new/")
    page.get_by_label("Chest X-ray images (PNG, JPEG or DICOM)").set_input_files(
        [str(IMAGES / FILM)]
    )
    page.get_by_label("Pseudonymous patient reference").fill("SITE-BROWSER-1")
    page.get_by_role("button", name="Upload and classify").click()
    page.wait_for_url(re.compile(r".*/cases/\d+/$"))
    case = Case.objects.get(owner=clinician_a, patient_ref="SITE-BROWSER-1")
    assert case.site == site_a
    prediction = Prediction.objects.get(image__case=case)
    run_job_now(Prediction, prediction.pk)

    page.goto(f"{live_server.url}/cases/{case.pk}/")
    label = page.locator("strong[data-label]")
    assert label.get_attribute("data-label") == "covid19"
    made_at = page.locator("[data-operating-point]")
    assert made_at.get_attribute("data-operating-point") == "1"
    assert f"{site_a.name}'s operating point 1" in made_at.inner_text()
    assert "COVID-19 sensitivity" in made_at.inner_text()
    assert_accessible(page)
    screenshot(page, "site-point-labels-the-upload")

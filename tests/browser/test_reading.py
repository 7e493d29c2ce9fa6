"""The reading room in a real browser: a radiologist opens the site worklist (highest
priority first), opens that study, zooms to 1:1, changes window/level on a 16-bit DICOM
(the grey under the pointer follows the window; the stored value does not change),
compares with the patient's earlier study, signs a report, and the clinician who
submitted the case reads it; a radiologist of another site gets a 404."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from apps.reading.models import Report
from apps.sites.models import Site
from apps.sites.services import default_site
from tests.browser.conftest import assert_accessible, log_in, screenshot
from tests.cases.test_input_safety import make_dicom
from tests.factories import PASSWORD, CaseFactory, CaseImageFactory, PredictionFactory
from tests.reading.conftest import member, stored_dicom

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = Path(os.environ.get("CXR_READING_SHOTS", "/tmp/shots"))


def _study(owner, probs, *, dicom: bool = False, syntax=ExplicitVRLittleEndian, **fields):
    case = CaseFactory(owner=owner, **fields)
    extra = {}
    if dicom:
        data = stored_dicom(make_dicom(bits=16, window=(2**15, 2**16), syntax=syntax))
        extra = {"source_format": "dicom", "original": ContentFile(data, name="study.dcm")}
    image = CaseImageFactory(case=case, **extra)
    PredictionFactory(
        image=image, probabilities=dict(zip(("covid19", "pneumonia", "normal"), probs, strict=True))
    )
    return case


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)
    screenshot(page, name)


def _readout(page, viewport: str) -> dict[str, float]:
    """Move the pointer to the middle of the viewport's canvas; its value and grey."""
    canvas = page.locator(f"[data-viewport='{viewport}'] canvas")
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    out = page.locator(f"[data-viewport='{viewport}'] [data-readout]")
    page.wait_for_function(
        "(el) => el.hasAttribute('data-value')", arg=out.element_handle(), timeout=10_000
    )
    return {k: float(out.get_attribute(f"data-{k}") or "nan") for k in ("value", "grey")}


def _changes_the_window(page, main) -> None:
    """A window around the value under the pointer: the same stored value, another grey."""
    before = _readout(page, "main")
    assert before["value"] > 255  # a 16-bit value, not the 8-bit rendition's
    centre, width = before["value"] + 500.0, 2000.0
    main.get_by_label("L", exact=True).fill(str(centre))
    main.get_by_label("W", exact=True).fill(str(width))
    main.get_by_label("W", exact=True).dispatch_event("change")
    assert main.get_attribute("data-window") == f"{centre:g}/{width:g}"
    after = _readout(page, "main")
    expected = round(min(1.0, max(0.0, (before["value"] - (centre - width / 2)) / width)) * 255)
    assert after["value"] == before["value"]
    assert after["grey"] == expected
    assert after["grey"] != before["grey"]


def _clinician_reads_the_report(page, url: str, owner, case) -> None:
    page.context.clear_cookies()
    log_in(page, url, owner.username, PASSWORD)
    page.goto(f"{url}/reading/cases/{case.pk}/report/")
    report = page.locator("[data-report]")
    assert "COVID-19" in report.inner_text()
    assert "Bilateral peripheral ground-glass opacities." in report.inner_text()
    assert_accessible(page)


def test_radiologist_reads_signs_and_the_clinician_sees_the_report(
    browser_page, live_server, media_root
):
    page, url = browser_page, live_server.url
    site = default_site()
    elsewhere = Site.objects.create(name="Hospital B", slug="hospital-b")
    radiologist = member(site, username="rad-a", roles=["radiologist"])
    outsider = member(elsewhere, username="rad-b", roles=["radiologist"])
    owner = member(site, username="dr-owner", roles=["clinician"])
    prior = _study(owner, (0.1, 0.1, 0.8), dicom=True, patient_ref="PAT-7")
    _study(owner, (0.05, 0.05, 0.9), patient_ref="PAT-LOW")
    urgent = _study(owner, (0.85, 0.1, 0.05), dicom=True, patient_ref="PAT-7")
    _study(owner, (0.3, 0.1, 0.6), patient_ref="PAT-MID")

    log_in(page, url, radiologist.username, PASSWORD)
    page.get_by_role("link", name="Worklist", exact=True).click()
    rows = page.locator("[data-worklist] tbody tr")
    assert rows.count() == 4
    assert rows.first.get_attribute("data-case") == str(urgent.pk)
    assert rows.first.get_attribute("data-high") is not None
    assert_accessible(page)
    _shot(page, "reading-worklist")

    # Keyboard: the first row is selected; Enter opens it.
    page.locator("body").press("Enter")
    page.wait_for_url(re.compile(rf"/reading/cases/{urgent.pk}/$"))
    main = page.locator("[data-viewport='main']")
    page.wait_for_selector("[data-viewport='main'][data-ready]")
    page.wait_for_selector("[data-viewport='compare'][data-ready]")
    assert main.get_attribute("data-dicom") == "1"
    assert main.get_attribute("data-library") == "dicom-parser"  # parsed in the browser
    # The comparison viewport shows the patient's earlier study.
    prior_image = prior.images.get()
    assert page.locator("[data-viewport='compare']").get_attribute("data-showing") == (
        f"i{prior_image.pk}"
    )
    assert "DICOM header" in page.content()
    assert page.locator("[data-dicom-header] table tr").count() > 5
    assert "DOE^JANE" not in page.locator("[data-dicom-header]").inner_text()

    main.get_by_role("button", name="1:1").click()
    assert main.get_attribute("data-scale") == "1"
    assert_accessible(page)
    _shot(page, "reading-viewer-1to1")

    _changes_the_window(page, main)
    _shot(page, "reading-viewer-window")

    # The report: COVID-19, urgent; signed.
    page.get_by_label("COVID-19").check()
    page.get_by_label("Findings").fill("Bilateral peripheral ground-glass opacities.")
    page.get_by_label("Urgency").select_option("urgent")
    page.get_by_role("button", name="Sign the report").click()
    page.wait_for_url(re.compile(rf"/reading/cases/{urgent.pk}/report/$"))
    assert Report.objects.get(case=urgent).impression == "covid19"

    _clinician_reads_the_report(page, url, owner, urgent)

    # A radiologist of another site: 404.
    page.context.clear_cookies()
    log_in(page, url, outsider.username, PASSWORD)
    response = page.goto(f"{url}/reading/cases/{urgent.pk}/")
    assert response is not None
    assert response.status == 404


def test_ct_series_scrolls_and_takes_the_lung_window(browser_page, live_server, media_root):
    from tests.ct_uploads import CT_SLICE_2, ct_dicom, hounsfield_of

    page, url = browser_page, live_server.url
    site = default_site()
    radiologist = member(site, username="rad-ct", roles=["radiologist"])
    owner = member(site, username="dr-ct", roles=["clinician"])
    case = CaseFactory(owner=owner, modality="ct", patient_ref="CT-PAT")
    slices = []
    for hu in (hounsfield_of(), hounsfield_of(CT_SLICE_2)):
        data = stored_dicom(ct_dicom(hu).read())
        slices.append(
            CaseImageFactory(
                case=case,
                fixture="2168a917.jpg",
                source_format="dicom",
                original=ContentFile(data, name="slice.dcm"),
            )
        )
    log_in(page, url, radiologist.username, PASSWORD)
    page.goto(f"{url}/reading/cases/{case.pk}/")
    main = page.locator("[data-viewport='main']")
    page.wait_for_selector("[data-viewport='main'][data-ready]")
    assert main.get_attribute("data-showing") == f"i{slices[0].pk}"
    main.get_by_label("Window").select_option("lung")
    assert main.get_attribute("data-window") == "-600/1500"
    value = _readout(page, "main")
    assert -1100 <= value["value"] <= 700  # Hounsfield units
    _shot(page, "reading-viewer-ct-lung-window")
    # Page Down in the viewport, or the wheel, moves to the next slice.
    main.focus()
    page.keyboard.press("PageDown")
    page.wait_for_selector(f"[data-viewport='main'][data-showing='i{slices[1].pk}'][data-ready]")
    assert "slice 2 of 2" in main.locator("[data-slice]").inner_text()
    box = main.locator("canvas").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 50, box["y"] + 50)
    page.mouse.wheel(0, -120)
    page.wait_for_selector(f"[data-viewport='main'][data-showing='i{slices[0].pk}'][data-ready]")
    assert_accessible(page)


def test_a_compressed_dicom_is_windowed_on_the_servers_decoded_values(
    browser_page, live_server, media_root
):
    """dicom-parser decodes no compressed transfer syntax: for an RLE-compressed study the
    viewer, bundle loaded, windows the server's decoded copy of the same 16-bit values."""
    page, url = browser_page, live_server.url
    site = default_site()
    radiologist = member(site, username="rad-rle", roles=["radiologist"])
    owner = member(site, username="dr-rle", roles=["clinician"])
    case = _study(owner, (0.2, 0.2, 0.6), dicom=True, syntax=RLELossless, patient_ref="RLE-1")
    with case.images.get().original.open("rb") as handle:
        assert RLELossless in handle.read(1024).decode("latin-1")  # stored compressed
    log_in(page, url, radiologist.username, PASSWORD)
    page.goto(f"{url}/reading/cases/{case.pk}/")
    main = page.locator("[data-viewport='main']")
    page.wait_for_selector("[data-viewport='main'][data-ready]")
    assert page.evaluate("window.cxrDicom.library") == "dicom-parser"  # the bundle is there
    assert main.get_attribute("data-dicom") == "1"
    assert main.get_attribute("data-library") == ""  # the server's copy
    assert page.locator("[data-dicom-header] table tr").count() > 5
    _changes_the_window(page, main)
    assert_accessible(page)

"""A reader study in a real browser: two readers disagree, the adjudicator decides,
the clinician's case page shows the label and the model admins' statistics follow."""

import pytest

from apps.accounts.models import AuditEvent
from apps.cases.access import image_ref
from apps.cases.models import Adjudication, CaseImage
from tests.browser.conftest import assert_accessible, log_in, screenshot
from tests.factories import PASSWORD, CaseFactory, CaseImageFactory, PredictionFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _as(page, base_url: str, user) -> None:
    page.context.clear_cookies()
    log_in(page, base_url, user.username, PASSWORD)


def _reader_row(page, reader: str):
    return page.locator(f'table[data-readers] tr[data-reader="{reader}"]')


def _reads(page, base_url: str, reader, verdict: str, note: str, ref: str) -> None:
    """A reader labels the image from the queue, without seeing the model's answer; the
    page names the image by its reference only."""
    _as(page, base_url, reader)
    page.get_by_role("link", name="Labelling queue", exact=True).click()
    assert page.locator("article[data-image]").get_attribute("data-image") == ref
    assert page.get_by_role("heading", name=f"Image {ref[:6]}…").count() == 1
    assert "Model says" not in page.content()
    assert page.locator("#label-form button[aria-pressed]").count() == 0  # nothing preselected
    page.get_by_label("Note (optional)").fill(note)
    page.get_by_role("button", name=verdict).click()
    page.wait_for_url("**/cases/labelling/")


def _decides(page, base_url: str, adjudicator, ref: str) -> None:
    """The adjudicator sees both verdicts with their notes and decides COVID-19."""
    _as(page, base_url, adjudicator)
    page.get_by_role("link", name="Adjudication", exact=True).first.click()
    assert_accessible(page)
    page.get_by_role("link", name=f"Image {ref[:6]}…").click()
    page.wait_for_url(f"**/cases/adjudication/{ref}/")
    readings = page.locator("table.readings")
    for text in ("reader-one", "reader-two", "right lower lobe", "bilateral peripheral"):
        assert text in readings.inner_text()
    assert "Model says" not in page.content()
    assert_accessible(page)
    screenshot(page, "adjudicator-decides")
    page.get_by_label("Note (optional)").fill("peripheral GGO: typical")
    page.get_by_role("button", name="COVID-19").click()
    page.wait_for_url("**/cases/adjudication/")
    assert page.locator(f'tr[data-decided="{ref}"]').inner_text().count("COVID-19") == 1


def test_two_readers_disagree_and_the_adjudicator_decides(
    browser_page, live_server, settings, clinician, model_admin
):
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "adjudication", 2
    image = CaseImageFactory(case=CaseFactory(owner=clinician))
    PredictionFactory(image=image)  # the model says "normal"
    first = UserFactory(username="reader-one", roles=["annotator"])
    second = UserFactory(username="reader-two", roles=["annotator"])
    adjudicator = UserFactory(username="senior-reader", roles=["adjudicator"])
    page, url = browser_page, live_server.url

    ref = image_ref(image)
    _reads(page, url, first, "Other pneumonia", "right lower lobe consolidation", ref)
    _reads(page, url, second, "COVID-19", "bilateral peripheral opacities", ref)
    assert_accessible(page)  # the queue with the disputed image listed
    assert CaseImage.objects.get(pk=image.pk).confirmed_label == ""

    # The statistics before the decision: nothing adjudicated yet.
    _as(page, url, model_admin)
    page.get_by_role("link", name="Reader agreement").first.click()
    assert page.locator("[data-adjudicated-count]").get_attribute("data-adjudicated-count") == "0"
    assert _reader_row(page, "reader-one").locator("td[data-adjudicated-n]").inner_text() == "0"
    pair = page.locator('tr[data-pair="reader-one|reader-two"] td').all_inner_texts()
    assert pair[:2] == ["1", "0.000"]  # one image both read, no agreement

    _decides(page, url, adjudicator, ref)
    decision = Adjudication.objects.get(image=image)
    assert (decision.adjudicator, decision.label) == (adjudicator, "covid19")
    assert AuditEvent.objects.filter(action="label.adjudicate", actor=adjudicator).count() == 1

    # The clinician's case page shows the adjudicated label.
    _as(page, url, clinician)
    page.goto(f"{url}/cases/{image.case_id}/")
    expert = page.locator("[data-expert-label]")
    assert expert.get_attribute("data-expert-label") == "covid19"
    assert "decided by an adjudicator" in expert.inner_text()
    assert "differs from the model's prediction" in expert.inner_text()

    # The statistics page follows: each reader against the adjudicated label.
    _as(page, url, model_admin)
    page.get_by_role("link", name="Reader agreement").first.click()
    assert page.locator("[data-adjudicated-count]").get_attribute("data-adjudicated-count") == "1"
    for reader, agreement in (("reader-one", "0.000"), ("reader-two", "1.000")):
        row = _reader_row(page, reader)
        assert row.locator("td[data-adjudicated-n]").inner_text() == "1"
        assert row.locator("td[data-adjudicated-agreement]").inner_text() == agreement
    assert_accessible(page)
    screenshot(page, "admin-reader-agreement")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    csv_text = download.value.path().read_text()
    assert "reader_vs_adjudicated,reader-two,agreement,1,1.0000" in csv_text

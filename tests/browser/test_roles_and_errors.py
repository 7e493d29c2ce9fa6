"""Each role is refused the others' pages, in the product's own error pages."""

import pytest

from tests.browser.conftest import assert_accessible, log_in, screenshot
from tests.factories import PASSWORD, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

REFUSED = {
    "clinician": [
        "/cases/labelling/",
        "/registry/",
        "/registry/compare/",
        "/cases/agreement/",
        "/audit/",
    ],
    "annotator": [
        "/cases/",
        "/cases/new/",
        "/registry/",
        "/registry/compare/",
        "/cases/adjudication/",
        "/audit/",
    ],
    "model_admin": ["/cases/", "/cases/new/", "/cases/labelling/", "/cases/adjudication/"],
    "adjudicator": ["/cases/", "/cases/labelling/", "/registry/", "/cases/agreement/", "/audit/"],
}
ALLOWED = {
    "clinician": ["/cases/", "/cases/new/"],
    "annotator": ["/cases/labelling/", "/cases/labelling/mine/"],
    "model_admin": ["/registry/", "/registry/compare/", "/cases/agreement/", "/audit/"],
    "adjudicator": ["/cases/adjudication/"],
}


@pytest.mark.parametrize("role", sorted(REFUSED))
def test_each_role_is_refused_the_other_roles_pages(
    browser_page, live_server, role, clinician, annotator, model_admin
):
    users = {"clinician": clinician, "annotator": annotator, "model_admin": model_admin}
    if role == "adjudicator":
        users[role] = UserFactory(username="adjudicator-a", roles=["adjudicator"])
    user = users[role]
    page = browser_page
    log_in(page, live_server.url, user.username, PASSWORD)
    for path in REFUSED[role]:
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 403, path
        assert page.get_by_role("heading", name="Not allowed").is_visible()
    assert_accessible(page)
    screenshot(page, f"{role}-refused")
    for path in ALLOWED[role]:
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 200, path
        assert_accessible(page)
    # The navigation offers only the role's own pages.
    links = set(page.get_by_role("navigation", name="Main").get_by_role("link").all_inner_texts())
    expected = {
        "clinician": {"My cases", "New case"},
        "annotator": {"Labelling queue"},
        "model_admin": {
            "Model registry",
            "Reader agreement",
            "Audit log",
            "Synthetic images",
            "Sites",
        },
        "adjudicator": {"Adjudication"},
    }[role]
    assert links == expected


def test_anonymous_visitors_are_sent_to_log_in_and_unknown_pages_are_404(
    browser_page, live_server, clinician
):
    page = browser_page
    page.goto(f"{live_server.url}/cases/")
    assert "/login/" in page.url
    assert_accessible(page)
    screenshot(page, "login")
    log_in(page, live_server.url, clinician.username, PASSWORD)
    response = page.goto(f"{live_server.url}/cases/999999/")
    assert response.status == 404
    assert page.get_by_role("heading", name="Not found").is_visible()
    assert_accessible(page)
    screenshot(page, "not-found")

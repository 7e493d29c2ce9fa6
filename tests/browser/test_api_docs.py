"""The API documentation pages render under the Content-Security-Policy (their scripts
are files; browser_page fails the test on any refusal)."""

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_swagger_ui_and_redoc_render_under_the_policy(browser_page, live_server):
    page = browser_page
    page.goto(f"{live_server.url}/api/v1/docs/")
    page.locator(".opblock-tag").first.wait_for()  # Swagger UI drew the schema's tags
    assert page.locator(".opblock").count() > 10
    page.goto(f"{live_server.url}/api/v1/redoc/")
    # Redoc drew the operations (the menu entry stays hidden until its group opens).
    page.locator("h2", has_text="Obtain an API token").first.wait_for()
    assert "fonts.googleapis.com" not in page.content()

"""Playwright driving Debian's Chromium against a live server.

Chromium comes from Debian (`apt-get install chromium`, done by .ci/run); a
test tool's own browser download cannot work on this network. Without it
these tests skip with that reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
# Without these flags Chromium keeps calling hosts this machine cannot reach.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Outside resources the policy is meant to refuse, on pages that work without them: the
# "API docs by Redocly" badge image of the Redoc page (/api/v1/redoc/).
CSP_EXPECTED_REFUSALS = ("https://cdn.redoc.ly/",)


@pytest.fixture
def browser_page(monkeypatch):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not installed (apt-get install chromium); .ci/run installs it"
        if os.environ.get("CXR_REQUIRE_BROWSER") == "1":
            pytest.fail(message)  # CI must run the browser tests, never skip them
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the
    # test makes between browser steps are still synchronous and safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        # The policy refuses eval: page.wait_for_function takes "() => ..." (a function
        # runs as Playwright's own code), never a bare expression (evaluated in the page).
        # Anything the Content-Security-Policy refuses (an inline script or style, a
        # handler attribute) is a feature that silently stopped working: fail the test.
        refused: list[str] = []
        page.on(
            "console",
            lambda message: (
                refused.append(f"{page.url}: {message.text}")
                if "Content Security Policy" in message.text
                and not any(url in message.text for url in CSP_EXPECTED_REFUSALS)
                else None
            ),
        )
        yield page
        context.close()
        browser.close()
        assert refused == [], "refused by the Content-Security-Policy: " + "; ".join(refused)


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def assert_accessible(page) -> None:
    """axe-core (bundled with axe-playwright-python, no network) finds no violation."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    problems = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
    ]
    assert problems == [], f"{page.url}: " + "; ".join(problems)

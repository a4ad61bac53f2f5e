"""The dashboard in a real headless browser (the system's Chromium, driven by Playwright):
every page loads, a dead job leads to its log and is retried, and markup from a job is
shown as text, never run.

Skipped when Chromium is missing, unless CI or QUEUECTL_REQUIRE_BROWSER=1 is set (then a
failure). With QUEUECTL_SCREENSHOTS=DIR, the main pages are saved there as PNG (the
README's screenshots: `QUEUECTL_SCREENSHOTS=docs/screenshots pytest -k browser`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .serving import TOKEN, XSS, XSS_ID, XSS_LABEL, fill, request, serving

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("dashboard")]  # one browser per run

BROWSER_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REQUIRED = bool(os.environ.get("CI")) or os.environ.get("QUEUECTL_REQUIRE_BROWSER") == "1"
SCREENSHOTS = os.environ.get("QUEUECTL_SCREENSHOTS")


def missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (required: CI or QUEUECTL_REQUIRE_BROWSER=1 is set)")
    pytest.skip(f"browser tests skipped: {reason}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing("no chromium on PATH: install it (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed (it is in the dev dependency group)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("dashboard") / "home"
    fill(home)
    with serving(home, "--allow-actions") as found:
        yield found


@pytest.fixture
def page(browser: Any, url: str) -> Iterator[Any]:
    # Without the Content-Security-Policy: escaping alone must keep markup from running
    # (and Playwright's waits evaluate strings, which the policy forbids).
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert errors == [], f"the page raised JavaScript errors: {errors}"


def visit(page: Any, url: str, route: str) -> None:
    """Open a page of the dashboard and wait until it has rendered."""
    page.goto(url + "#/" + route)
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector("main h1")


def shoot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


@pytest.mark.parametrize(
    ("route", "title", "shows"),
    [
        ("", "Overview", "Throughput, last hour"),
        ("jobs", "Jobs", XSS_ID),
        ("jobs?state=completed", "Jobs: completed", "done-job"),
        ("dlq", "Dead letter queue", XSS_ID),
        ("schedules", "Schedules", "nightly"),
        ("workers", "Workers", "No live workers."),
        (f"job/{XSS_ID}", f"Job {XSS_ID}", "exit code 3"),
    ],
)
def test_every_page_loads_and_shows_markup_as_text(
    page: Any, url: str, route: str, title: str, shows: str
) -> None:
    visit(page, url, route)
    assert page.inner_text("main h1") == title
    text = page.inner_text("main")
    assert shows in text
    if route in ("jobs", "dlq", f"job/{XSS_ID}"):
        assert XSS in text and XSS_LABEL in text  # the command and label, literally
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("main script, main b").count() == 0
    shoot(page, route.split("?")[0].replace("/", "-").replace(XSS_ID, "detail") or "overview")


def test_a_dead_job_leads_to_its_log_and_is_retried(page: Any, url: str) -> None:
    visit(page, url, "")
    page.click("a.card[data-state='dead']")
    page.wait_for_selector(f"tr[data-id='{XSS_ID}']")
    page.click(f"tr[data-id='{XSS_ID}'] a.job-link")
    page.wait_for_selector("#log")
    assert XSS in page.inner_text("#log")
    assert page.evaluate("typeof window.pwned") == "undefined"

    page.click("button[data-action='retry']")  # no token yet: refused, nothing changes
    page.wait_for_function("document.getElementById('message').textContent.length > 0")
    assert "token" in page.inner_text("#message")
    assert request(url + f"api/jobs/{XSS_ID}")[1]["state"] == "dead"

    page.fill("#token", TOKEN)
    page.click("#token-form button")  # the page renders again, with the token
    page.wait_for_function("document.body.dataset.page === 'job'")
    page.click("button[data-action='retry']")
    try:
        page.wait_for_function(
            "document.getElementById('job-state')?.textContent === 'pending'", timeout=10_000
        )
    except Exception:
        raise AssertionError(page.inner_text("body")) from None
    assert request(url + f"api/jobs/{XSS_ID}")[1]["state"] == "pending"

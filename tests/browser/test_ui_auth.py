"""The first pages a user meets, in Debian's Chromium against the real daemon: first-run
setup through the page (too short, mismatch, then on to the dashboard), login (wrong
password, lockout with its Retry-After countdown, then in), logout, and the logs view.

The tests of this module share one daemon and run in order: the first sets the password.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.api_client import ADMIN_PASSWORD, LIGHT, Client
from tests.daemon_proc import DaemonProc, running_daemon

pytestmark = pytest.mark.browser

WRONG = "not the password at all"


@pytest.fixture(scope="module")
def fresh_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """A daemon with no admin password yet (no media wait: these pages need none)."""
    with running_daemon(tmp_path_factory.mktemp("ui-auth"), extra=LIGHT) as d:
        yield d


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile per test: no cookie of an earlier test."""
    ctx = browser.new_context(viewport={"width": 1024, "height": 800})
    yield ctx
    ctx.close()


def watch_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def shot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")


def test_first_run_setup_through_the_page(fresh_daemon: DaemonProc, context: BrowserContext,
                                          artifacts: Path) -> None:
    page = context.new_page()
    errors = watch_errors(page)
    page.goto(fresh_daemon.url + "/")
    # No password yet: the dashboard sends the browser to the first-run setup.
    expect(page).to_have_url(fresh_daemon.url + "/setup")
    message = page.locator("#message")

    page.fill("#password", "short")
    page.fill("#again", "short")
    page.click("#submit")
    expect(message).to_contain_text("at least 10 characters")
    expect(page.locator("#password")).to_have_attribute("aria-invalid", "true")
    shot(page, artifacts / "ui_setup_too_short.png")

    page.fill("#password", ADMIN_PASSWORD)
    page.fill("#again", ADMIN_PASSWORD + "!")
    page.click("#submit")
    expect(message).to_contain_text("differ")
    assert Client(fresh_daemon.url).get("/api/v1/session").json()["setup_required"]

    page.fill("#again", ADMIN_PASSWORD)
    page.click("#submit")
    # Set, logged in, and on the dashboard, which gets the live state over SSE.
    expect(page).to_have_url(fresh_daemon.url + "/")
    expect(page.locator("#device-state")).to_have_attribute(
        "data-state", re.compile(r"^(starting|live_local)$"), timeout=10_000)
    assert not Client(fresh_daemon.url).get("/api/v1/session").json()["setup_required"]
    # The setup page is gone for good: it now sends everyone to the login.
    page.goto(fresh_daemon.url + "/setup")
    expect(page).to_have_url(re.compile(r"/(login)?$"))
    assert not errors, errors


def test_login_lockout_and_logout(fresh_daemon: DaemonProc, context: BrowserContext,
                                  artifacts: Path) -> None:
    page = context.new_page()
    errors = watch_errors(page)
    page.goto(fresh_daemon.url + "/settings")
    expect(page).to_have_url(fresh_daemon.url + "/login")
    message = page.locator("#message")
    button = page.locator("#submit")

    page.click("#submit")
    expect(message).to_have_text("Enter the admin password.")
    # The limiter forgives five wrong passwords in a row; the sixth locks this address
    # out for 2 s (appliance/web/ratelimit.py), said with Retry-After.
    for _ in range(5):
        page.fill("#password", WRONG)
        page.click("#submit")
        expect(message).to_have_text("Wrong password.")
        expect(button).to_be_enabled()
        page.fill("#password", "")  # the next fill must change the text for the wait above
    page.fill("#password", WRONG)
    page.click("#submit")
    expect(message).to_contain_text(re.compile(r"Too many failed attempts.*Try again in \d+ s"))
    expect(button).to_be_disabled()
    shot(page, artifacts / "ui_login_locked_out.png")
    # The countdown ends, the button comes back, and the right password gets in.
    expect(message).to_contain_text("You can try again now", timeout=10_000)
    expect(button).to_be_enabled()
    page.fill("#password", ADMIN_PASSWORD)
    page.click("#submit")
    expect(page).to_have_url(fresh_daemon.url + "/")
    expect(page.locator("#nav a[href='/']")).to_have_attribute("aria-current", "page")

    # Log out: back to the login page, and the session is over on the server too.
    page.click("#logout")
    expect(page).to_have_url(fresh_daemon.url + "/login")
    page.goto(fresh_daemon.url + "/")
    expect(page).to_have_url(fresh_daemon.url + "/login")
    session = page.request.get(fresh_daemon.url + "/api/v1/session").json()
    assert session["authenticated"] is False
    assert not errors, errors


def test_logs_view(fresh_daemon: DaemonProc, context: BrowserContext, artifacts: Path) -> None:
    page = context.new_page()
    errors = watch_errors(page)
    r = page.request.post(fresh_daemon.url + "/api/v1/login", data={"password": ADMIN_PASSWORD})
    assert r.ok, r.text()
    page.goto(fresh_daemon.url + "/logs")
    records = page.locator("#log-list li")
    # The failed logins of the test before are in the log, as warnings.
    expect(page.locator("#log-list li", has_text="login failed from").first).to_be_visible()
    expect(page.locator("#log-list li", has_text="serving on")).to_have_count(1)
    page.select_option("#log-level", "WARNING")
    expect(page.locator("#log-list li", has_text="serving on")).to_have_count(0)
    levels = set(records.evaluate_all("els => els.map(e => e.dataset.level)"))
    assert levels and levels <= {"WARNING", "ERROR", "CRITICAL"}, levels
    expect(page.locator("#log-status")).to_contain_text(re.compile(r"\d+ of \d+ records"))

    # Followed: a new record shows up without a reload.
    failed = page.locator("#log-list li", has_text="login failed from")
    before = failed.count()
    assert Client(fresh_daemon.url).login(WRONG).status == 401
    expect(failed).to_have_count(before + 1, timeout=6_000)
    shot(page, artifacts / "ui_logs.png")
    assert not errors, errors

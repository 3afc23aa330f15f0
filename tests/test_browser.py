"""The Flask example in a real Chromium, driven by Playwright, served by waitress.

What only a browser can show: that a cookie without ``Max-Age`` really ends with the
browser while a remembered one survives a restart on the same profile, that a
per-key timeout ends a flash message in the page (on the server's clock, which the
``clock`` fixture moves), and that a logout in one tab ends the session in the others.

Playwright's own browser download does not work on this network, so the test runs
Debian's ``/usr/bin/chromium``. Without it, or without the ``playwright`` package,
the tests skip, unless ``WSGISESSION_REQUIRE_SERVICES=1`` (CI), which fails them.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import FakeClock, services_required

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flask_app.py"
#: The flash message's per-key timeout.
FLASH_SECONDS = 30
#: How long a page may take to show what it should, before the test fails.
DEADLINE = 15.0


def _unavailable(reason: str) -> None:
    if services_required():
        pytest.fail(f"{reason} (WSGISESSION_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """Playwright's driver, once per module; skips without it or without Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Flask example with a file store, on waitress on a free loopback port."""
    from waitress import create_server

    spec = importlib.util.spec_from_file_location("example_flask_browser", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.FLASH_SECONDS = FLASH_SECONDS
    directory = tmp_path_factory.mktemp("browser")
    app = example.create_app(
        secret_key="browser-test-secret-long-enough-for-a-key",
        store=f"file:{directory}/sessions",
        cleanup_interval=0,
    )
    server: Any = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=10)
        app.wsgi_app.close()


class Profile:
    """One browser profile directory, launched and relaunched like a user would."""

    def __init__(self, playwright: Playwright, directory: Path) -> None:
        self._playwright = playwright
        self._directory = directory
        self.context: BrowserContext | None = None

    def launch(self) -> BrowserContext:
        """Start Chromium on this profile."""
        self.context = self._playwright.chromium.launch_persistent_context(
            user_data_dir=str(self._directory),
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
        )
        self.context.set_default_timeout(DEADLINE * 1000)
        return self.context

    def close(self) -> None:
        """Quit Chromium, as closing its last window does."""
        if self.context is not None:
            self.context.close()
            self.context = None

    def relaunch(self) -> BrowserContext:
        """Quit and start again on the same profile."""
        self.close()
        return self.launch()


@pytest.fixture
def profile(playwright: Playwright, tmp_path: Path) -> Iterator[Profile]:
    """A fresh browser profile, closed after the test."""
    browser = Profile(playwright, tmp_path / "profile")
    try:
        yield browser
    finally:
        browser.close()


def _open(context: BrowserContext, url: str) -> Page:
    page = context.pages[0] if context.pages else context.new_page()
    page.goto(url)
    return page


def _log_in(page: Page, name: str, *, remember: bool) -> None:
    page.fill("#username", name)
    if remember:
        page.check("#remember")
    page.click("#login")
    page.wait_for_selector("#user")


def _signed_in_as(page: Page) -> str | None:
    user = page.query_selector("#user")
    return None if user is None else user.inner_text()


def _session_cookie(context: BrowserContext) -> Any:
    cookies = [cookie for cookie in context.cookies() if cookie["name"] == "session_id"]
    assert len(cookies) <= 1, cookies
    return cookies[0] if cookies else None


def test_session_without_remember_me_ends_with_the_browser(
    profile: Profile, base_url: str
) -> None:
    page = _open(profile.launch(), base_url)
    _log_in(page, "ann", remember=False)
    assert _signed_in_as(page) == "ann"
    cookie = _session_cookie(page.context)
    assert cookie["expires"] == -1, "a browser-lifetime cookie has no expiry"
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    context = profile.relaunch()

    assert _session_cookie(context) is None, "Chromium kept the browser-lifetime cookie"
    page = _open(context, base_url)
    assert _signed_in_as(page) is None
    assert page.inner_text("#count") == "1", "the old session's data is still served"


def test_remembered_session_survives_a_browser_restart(profile: Profile, base_url: str) -> None:
    page = _open(profile.launch(), base_url)
    _log_in(page, "bob", remember=True)
    assert "(remembered)" in page.content()
    cookie = _session_cookie(page.context)
    assert cookie["expires"] > time.time() + 29 * 86400, "not the 30-day remember-me cookie"

    context = profile.relaunch()

    page = _open(context, base_url)
    assert _signed_in_as(page) == "bob"
    assert "(remembered)" in page.content()
    assert page.inner_text("#count") == "3", "the session's data did not survive"


def test_flash_message_vanishes_after_its_timeout(
    profile: Profile, base_url: str, clock: FakeClock
) -> None:
    """The server runs in this process: the ``clock`` fixture moves its clock."""
    page = _open(profile.launch(), base_url)
    _log_in(page, "cat", remember=False)
    assert page.inner_text("#flash") == "Welcome, cat!"

    clock.advance(FLASH_SECONDS - 1)
    page.reload()
    assert page.query_selector("#flash") is not None, "the flash left too early"
    clock.advance(2)
    page.reload()
    assert page.query_selector("#flash") is None, "the flash message outlived its timeout"
    assert _signed_in_as(page) == "cat", "the session ended with its flash message"


def test_logout_ends_the_session_in_every_tab(profile: Profile, base_url: str) -> None:
    context = profile.launch()
    first = _open(context, base_url)
    _log_in(first, "dan", remember=False)
    second = context.new_page()
    second.goto(base_url)
    assert _signed_in_as(second) == "dan"
    assert second.inner_text("#count") == "3"
    before = _session_cookie(context)["value"]

    first.click("#logout")
    first.wait_for_selector("#login")
    second.reload()

    assert _signed_in_as(first) is None
    assert _signed_in_as(second) is None
    # The first tab's redirect after the logout started a new session (visit 1); the
    # other tab now shares it (visit 2) instead of the old one (which would say 4).
    assert second.inner_text("#count") == "2"
    assert _session_cookie(context)["value"] != before

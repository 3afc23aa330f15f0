"""The flows every example app must pass over a real server: one suite, reused by subclassing.

A test module subclasses :class:`ExampleFlows` and provides a ``server`` fixture
serving its example (``serve_example``) under each of ``SERVERS``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

import pytest

from tests.frameworks.servers import (
    FLASH_SECONDS,
    REMEMBER_ME_TIMEOUT,
    SERVERS,
    Browser,
    Response,
    Server,
    serve_example,
)

_COUNT = re.compile(r'id="count">(\d+)<')


def count(response: Response) -> int:
    """The visit count the page shows."""
    assert response.status == 200, (response.status, response.body)
    match = _COUNT.search(response.body)
    assert match is not None, response.body
    return int(match.group(1))


def signed_in_as(response: Response) -> str | None:
    """The user the page says is signed in, or ``None``."""
    match = re.search(r'id="user">([^<]*)<', response.body)
    return match.group(1) if match else None


def log_in(browser: Browser, name: str, remember: bool = False) -> Response:
    """Post the login form; return the redirect that answers it."""
    form = {"username": name}
    if remember:
        form["remember"] = "on"
    response = browser.post("/login", form)
    assert response.status in (302, 303), (response.status, response.body)
    return response


class ExampleFlows:
    """The counter, login with and without remember-me, the flash and logout.

    A subclass names its example (``examples/<example>.py``), any extra keyword
    arguments of its ``create_app`` (``options``) and, if the app is not
    ``create_app(...)`` itself, the expression that makes it a WSGI callable (``wsgi``).
    """

    example: str
    options: ClassVar[dict[str, object]] = {}
    wsgi: str = ""

    @pytest.fixture(scope="class", params=SERVERS)
    @classmethod
    def server(
        cls, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Server]:
        """The example under each server, shared by the class's flows."""
        directory = tmp_path_factory.mktemp(cls.example)
        with serve_example(
            request.param, cls.example, directory, wsgi=cls.wsgi, **cls.options
        ) as running:
            yield running

    def test_counter_counts_per_client(self, server: Server) -> None:
        ann, bob = Browser(server.url), Browser(server.url)
        first = ann.get("/")
        assert count(first) == 1
        assert first.set_cookie("session_id") is not None
        assert "cookie" in (first.header("Vary") or "").lower()
        assert count(ann.get("/")) == 2
        assert count(bob.get("/")) == 1
        assert count(ann.get("/")) == 3

    def test_login_regenerates_into_a_browser_lifetime_cookie(self, server: Server) -> None:
        browser = Browser(server.url)
        count(browser.get("/"))
        before = browser.cookies["session_id"]

        cookie = log_in(browser, "ann").set_cookie("session_id")
        assert cookie is not None
        assert cookie.value != before, "the session id was not regenerated on login"
        assert cookie["max-age"] == "" and cookie["expires"] == ""

        page = browser.get("/")
        assert signed_in_as(page) == "ann"
        assert count(page) == 2, "the data did not survive the new id"
        assert "(remembered)" not in page.body

        # The id from before the login is gone, not a second way into the session.
        replay = Browser(server.url, {"session_id": before}).get("/")
        assert signed_in_as(replay) is None and count(replay) == 1

    def test_login_with_remember_me_sets_a_persistent_cookie(self, server: Server) -> None:
        browser = Browser(server.url)
        cookie = log_in(browser, "bob", remember=True).set_cookie("session_id")
        assert cookie is not None and cookie["max-age"] == str(REMEMBER_ME_TIMEOUT)
        page = browser.get("/")
        assert signed_in_as(page) == "bob" and "(remembered)" in page.body

    def test_flash_disappears_after_its_timeout(self, server: Server) -> None:
        browser = Browser(server.url)
        log_in(browser, "cy")
        assert "Welcome, cy!" in browser.get("/").body
        server.advance_clock(FLASH_SECONDS - 5)
        assert "Welcome, cy!" in browser.get("/").body, "the flash left before its timeout"
        server.advance_clock(6)
        page = browser.get("/")
        assert "Welcome" not in page.body, "the flash outlived its per-key timeout"
        assert signed_in_as(page) == "cy", "the session went with the flash"

    def test_logout_ends_the_session(self, server: Server) -> None:
        browser = Browser(server.url)
        log_in(browser, "dee")
        old = browser.cookies["session_id"]
        assert signed_in_as(browser.get("/")) == "dee"

        response = browser.post("/logout")
        assert response.status in (302, 303)
        expired = response.set_cookie("session_id")
        assert expired is not None and expired["max-age"] == "0"

        page = browser.get("/")
        assert signed_in_as(page) is None and count(page) == 1
        replay = Browser(server.url, {"session_id": old}).get("/")
        assert signed_in_as(replay) is None and count(replay) == 1

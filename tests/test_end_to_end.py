"""The main flows through the middleware, on every store: a counter, remember-me and
idle expiry, a per-key timeout, a logout seen from another tab.

Each flow's rules are in docs/behaviour.rst, sections "Expiry", "The session object"
and "Invalidate"; ``test_middleware.py`` checks them one by one on the memory store.
"""

from __future__ import annotations

from typing import Any

from werkzeug.test import Client

from tests.helpers import (
    FakeClock,
    body,
    cookie_value,
    counter,
    deletes_the_cookie,
    dump,
    key_of,
    login,
    logout,
    make_client,
    set_cookies,
    with_cookie,
)
from wsgisession.stores import Store

ROUTES = {"/inc": counter, "/": dump, "/login": login, "/logout": logout}


def client_for(store: Store, **options: Any) -> Client:
    client, _ = make_client(ROUTES, store=store, **options)
    return client


def test_counter(store: Store) -> None:
    client = client_for(store)
    assert [body(client.get("/inc")) for _ in range(3)] == [1, 2, 3]


def test_remember_me_outlives_the_idle_timeout(store: Store, clock: FakeClock) -> None:
    client = client_for(store, timeout=60, remember_me_timeout=3600)
    [header] = set_cookies(client.get("/login?remember=1"))
    assert "Max-Age=3600" in header
    clock.advance(600)
    assert body(client.get("/"))["user"] == "ann"

    forgetful = client_for(store, timeout=60, remember_me_timeout=3600)
    forgetful.get("/login")
    clock.advance(61)
    assert body(forgetful.get("/")) == {}


def test_per_key_timeout_and_idle_expiry(store: Store, clock: FakeClock) -> None:
    client = client_for(store, timeout=100)
    client.get("/login?flash=welcome")
    assert "flash" in body(client.get("/"))
    clock.advance(31)
    assert body(client.get("/")) == {"user": "ann"}
    clock.advance(101)
    response = client.get("/")
    assert body(response) == {}
    assert deletes_the_cookie(set_cookies(response)[0])


def test_logout_ends_the_session_everywhere(store: Store) -> None:
    client = client_for(store)
    client.get("/login")
    other_tab = with_cookie(client_for(store).application, cookie_value(client))  # another worker
    key = key_of(client)
    client.get("/logout")
    assert body(other_tab.get("/")) == {}
    assert store.load(key) is None

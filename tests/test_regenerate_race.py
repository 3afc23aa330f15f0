"""regenerate() racing another request on the same session, over every store.

The regenerating request loaded the session; another client's request (another tab)
then writes the same session, or logs it out, either while the first request's
handler runs or in the window between the first request's re-read of the old record
and its write of the new one. A write must be kept, and a logout must not be undone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Self

import pytest
from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Request

from tests.conftest import FakeClock
from tests.helpers import body, counter, dump, holds_no_session, make_client, set_cookies
from wsgisession import Session
from wsgisession.ids import store_key
from wsgisession.stores.base import Record, Store

When = Literal["handler", "write"]


class _Window(Store):
    """Delegates to *inner*, running ``hook`` once, right before a save that replaces.

    The middleware re-reads the old record right before that save, so the hook runs
    in the window between the re-read and the write.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.hook: Callable[[], object] | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        raise NotImplementedError

    def load(self, key: str) -> Record | None:
        return self.inner.load(key)

    def save(self, key: str, record: Record, **kwargs: Any) -> bool:
        hook = self.hook
        if hook is not None and kwargs.get("replaces") is not None:
            self.hook = None
            hook()
        return self.inner.save(key, record, **kwargs)

    def save_locked(
        self, key: str, build: Callable[[Record], Record | None], **kwargs: Any
    ) -> Record | None:
        return self.inner.save_locked(key, build, **kwargs)

    def refresh(self, key: str, expires_at: float, last_seen: float) -> bool:
        return self.inner.refresh(key, expires_at, last_seen)

    def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    def ping(self) -> None:
        self.inner.ping()

    def cleanup(self, *, limit: int | None = None) -> int:
        return self.inner.cleanup(limit=limit)

    def user_records(self, user_id: str) -> list[tuple[str, Record]]:
        return self.inner.user_records(user_id)

    def count(self) -> int | None:
        return self.inner.count()


def _sid(client: Client) -> str:
    cookie = client.get_cookie("session_id")
    assert cookie is not None
    return cookie.value.rsplit(".", 1)[0]


def _race(store: Store, when: When, other_path: str) -> tuple[Client, TestResponse, str]:
    """Log in (regenerate) while the other tab requests *other_path*; return the login's
    client, its response and the store key of the session before the login."""
    window = _Window(store)
    twin: Client | None = None

    def other_tab() -> None:
        assert twin is not None
        twin.get(other_path)

    def login(session: Session, request: Request) -> str:
        assert session["n"] == 1  # loaded before the other tab's request
        if when == "handler":
            other_tab()
        else:
            window.hook = other_tab
        session.regenerate()
        session["user"] = "ann"
        session.user_id = "ann"
        return "ok"

    def other(session: Session, request: Request) -> str:
        session["cart"] = ["book"]
        return "ok"

    def logout(session: Session, request: Request) -> str:
        session.invalidate()
        return "ok"

    client, middleware = make_client(
        {"/inc": counter, "/login": login, "/other": other, "/logout": logout, "/": dump},
        store=window,
    )
    client.get("/inc")
    old = store_key(_sid(client))
    twin = Client(middleware)
    cookie = client.get_cookie("session_id")
    assert cookie is not None
    twin.set_cookie("session_id", cookie.value)
    response = client.get("/login")
    assert window.hook is None, "the other tab's request never ran"
    return client, response, old


@pytest.mark.parametrize("when", ["handler", "write"])
def test_regenerate_keeps_the_other_tabs_write(store: Store, when: When) -> None:
    client, response, old = _race(store, when, "/other")
    assert response.status_code == 200
    new = store_key(_sid(client))
    assert new != old
    assert holds_no_session(store, old)
    assert body(client.get("/")) == {"n": 1, "user": "ann", "cart": ["book"]}
    assert [key for key, _ in store.user_records("ann")] == [new]


@pytest.mark.parametrize("when", ["handler", "write"])
def test_regenerate_does_not_undo_the_other_tabs_logout(store: Store, when: When) -> None:
    client, response, old = _race(store, when, "/logout")
    assert response.status_code == 200
    [header] = set_cookies(response)
    assert header.startswith("session_id=;") and "Max-Age=0" in header
    assert client.get_cookie("session_id") is None
    assert store.load(old) is None
    assert store.user_records("ann") == []
    assert store.count() in (None, 0)
    assert body(client.get("/")) == {}


# -- requests that still carry the old id -------------------------------------------


def _logged_in(store: Store, **options: Any) -> tuple[Client, str]:
    """A client logged in through a regenerate; return it and the cookie it had before."""

    def login(session: Session, request: Request) -> str:
        session.regenerate()
        session["user"] = "ann"
        return "ok"

    def put(session: Session, request: Request) -> str:
        session["late"] = "1"
        return "ok"

    client, _ = make_client(
        {"/inc": counter, "/login": login, "/put": put, "/": dump}, store=store, **options
    )
    client.get("/inc")
    before = client.get_cookie("session_id")
    assert before is not None
    client.get("/login")
    return client, before.value


def _with(client: Client, value: str) -> Client:
    other = Client(client.application)
    other.set_cookie("session_id", value)
    return other


def test_old_id_within_the_grace_gets_an_empty_session_and_no_cookie(store: Store) -> None:
    client, old = _logged_in(store)
    stale = _with(client, old)
    response = stale.get("/")
    assert body(response) == {} and set_cookies(response) == []
    # A write on it is dropped rather than stored under a cookie that would replace
    # the browser's new one.
    response = stale.get("/put")
    assert response.status_code == 200 and set_cookies(response) == []
    assert store.count() in (None, 1)
    assert body(client.get("/")) == {"n": 1, "user": "ann"}


def test_old_id_after_the_grace_gets_its_cookie_expired(store: Store, clock: FakeClock) -> None:
    client, old = _logged_in(store)
    clock.advance(61)
    [header] = set_cookies(_with(client, old).get("/"))
    assert header.startswith("session_id=;") and "Max-Age=0" in header


def test_no_grace_expires_the_old_cookie_at_once(store: Store) -> None:
    client, old = _logged_in(store, regenerate_grace=0)
    assert store.load(store_key(old.rsplit(".", 1)[0])) is None
    [header] = set_cookies(_with(client, old).get("/"))
    assert header.startswith("session_id=;") and "Max-Age=0" in header


def test_a_request_loaded_before_the_login_and_saved_after_sets_no_cookie(store: Store) -> None:
    """The old-id request's save finds the session moved: its write is dropped, and its
    response must not expire the cookie the login just gave the browser."""
    tabs: dict[str, Client] = {}

    def slow(session: Session, request: Request) -> str:
        session.get("n")
        tabs["login"].get("/login")
        session["late"] = "1"
        return "ok"

    def login(session: Session, request: Request) -> str:
        session.regenerate()
        session["user"] = "ann"
        return "ok"

    client, _ = make_client(
        {"/inc": counter, "/slow": slow, "/login": login, "/": dump}, store=store
    )
    client.get("/inc")
    cookie = client.get_cookie("session_id")
    assert cookie is not None
    tabs["login"] = _with(client, cookie.value)
    response = client.get("/slow")
    assert response.status_code == 200 and set_cookies(response) == []
    assert body(tabs["login"].get("/")) == {"n": 1, "user": "ann"}


def test_a_read_loaded_before_the_login_and_refreshed_after_sets_no_cookie(
    store: Store, clock: FakeClock
) -> None:
    """A read past half its lifetime refreshes at the end; on the tombstone the refresh
    fails, and that must not read as an ended session whose cookie is expired."""
    tabs: dict[str, Client] = {}

    def slow(session: Session, request: Request) -> int:
        n: int = session["n"]
        tabs["login"].get("/login")
        return n

    def login(session: Session, request: Request) -> str:
        session.regenerate()
        session["user"] = "ann"
        return "ok"

    client, _ = make_client(
        {"/inc": counter, "/slow": slow, "/login": login, "/": dump}, store=store
    )
    client.get("/inc")
    cookie = client.get_cookie("session_id")
    assert cookie is not None
    tabs["login"] = _with(client, cookie.value)
    clock.advance(1801)  # past half of the default timeout: a read now refreshes
    response = client.get("/slow")
    assert response.status_code == 200 and set_cookies(response) == []
    assert body(tabs["login"].get("/")) == {"n": 1, "user": "ann"}

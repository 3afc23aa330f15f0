"""``regenerate()``: the session's new id at login, over every store.

The behaviour is in docs/behaviour.rst, sections "Regenerate" and "The grace period and
its tombstone": the id changes and nothing else does; nothing happens unless the
request succeeds; the old handle ends nothing; a write or a logout from another tab is
neither lost nor undone; a request still carrying the old id gets no session and sets
no cookie during the grace period; a planted id (session fixation) dies at login.

How a store moves a record in one step is tested with that store: the SQL transaction
in ``stores/test_sql_failures.py``, the tombstone on disk in ``stores/test_file.py``,
Redis Cluster's two steps in ``stores/test_redis.py``; the conformance suite
(``wsgisession.testing``) runs every store's move against concurrent writes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal, Self

import pytest
from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Request

from tests.helpers import (
    SECRET,
    FakeClock,
    HTTPBrowser,
    body,
    cookie_value,
    counter,
    deletes_the_cookie,
    dump,
    holds_no_session,
    id_of,
    incr,
    key_of,
    live_sessions,
    login,
    logout,
    make_client,
    meanwhile,
    peek,
    put,
    raising_after_start_response,
    routed_app,
    run_together,
    serving,
    set_cookies,
    twin,
    with_cookie,
)
from wsgisession import Session, SessionMiddleware
from wsgisession.events import SessionEvent
from wsgisession.ids import store_key
from wsgisession.stores.base import Record, Store

GONE = {"data": {}, "new": True, "expired": True}


def regenerate(session: Session, request: Request) -> str:
    """Only a new id, nothing else."""
    session.regenerate()
    return "ok"


def handle(session: Session, request: Request) -> Any:
    return session.handle


ROUTES = {
    "/inc": counter,
    "/": dump,
    "/peek": peek,
    "/put": put,
    "/login": login,
    "/logout": logout,
    "/regenerate": regenerate,
    "/handle": handle,
}


# -- the new id ------------------------------------------------------------------------


def test_login_gives_a_new_id_and_the_old_one_stops_working(store: Store) -> None:
    """The data and ``created_at`` move to the new id, which one Set-Cookie names; the
    old id finds nothing (docs/behaviour.rst, section "Regenerate")."""
    created: list[float] = []

    def login_noting_created_at(session: Session, request: Request) -> str:
        created.append(session.created_at)
        login(session, request)
        created.append(session.created_at)
        return "ok"

    client, _ = make_client({**ROUTES, "/login": login_noting_created_at}, store=store)
    client.get("/inc")
    planted = cookie_value(client)
    response = client.get("/login?flash=welcome")
    assert len(set_cookies(response)) == 1
    assert id_of(cookie_value(client)) != id_of(planted)
    assert body(client.get("/")) == {"n": 1, "user": "ann", "flash": "welcome"}
    assert created[0] == created[1]
    assert holds_no_session(store, store_key(id_of(planted)))
    assert body(with_cookie(client.application, planted).get("/")) == {}
    assert live_sessions(store) == 1


def test_regenerate_keeps_the_user_and_remember_and_invalidate_drops_the_user(
    store: Store,
) -> None:
    client, middleware = make_client(ROUTES, store=store)
    client.get("/login?remember=1")
    before = cookie_value(client)
    [header] = set_cookies(client.get("/regenerate"))
    assert "Max-Age=" in header, "a remembered session's new cookie is persistent too"
    assert cookie_value(client) != before
    assert len(middleware.user_sessions("ann")) == 1
    assert body(client.get("/")) == {"user": "ann"}
    client.get("/logout")
    assert middleware.user_sessions("ann") == []


def test_regenerate_keeps_created_at_so_absolute_deadline_does_not_move(
    clock: FakeClock,
) -> None:
    client, _ = make_client(ROUTES, absolute_timeout=100)
    client.get("/inc")
    clock.advance(60)
    client.get("/login")
    clock.advance(41)
    assert body(client.get("/inc")) == 1


def test_regenerate_on_a_session_not_yet_stored_does_nothing() -> None:
    """A new session has no id to protect: it is stored once, under one fresh id."""

    def regenerate_then_write(session: Session, request: Request) -> str:
        session.regenerate()
        session["n"] = 1
        return "ok"

    client, middleware = make_client({**ROUTES, "/first": regenerate_then_write})
    fresh = client.get("/regenerate")
    assert set_cookies(fresh) == [] and live_sessions(middleware.store) == 0
    [header] = set_cookies(client.get("/first"))
    assert header.startswith("session_id=") and not deletes_the_cookie(header)
    assert body(client.get("/")) == {"n": 1}
    assert live_sessions(middleware.store) == 1


def test_regenerate_then_raise_after_start_response_keeps_the_old_session() -> None:
    """A request that fails, even after calling start_response, neither writes the
    new id nor drops the old one (docs/behaviour.rst, section "Errors")."""

    client = Client(
        SessionMiddleware(
            raising_after_start_response(Session.regenerate),
            secret_key=SECRET,
            store="memory://",
            cleanup_interval=0,
        )
    )
    client.get("/login")
    before = cookie_value(client)
    with pytest.raises(RuntimeError):
        client.get("/boom")
    assert cookie_value(client) == before
    assert client.get("/").get_data(as_text=True) == "[('n', 1)]"


# -- handles ------------------------------------------------------------------------------


def test_regenerate_moves_the_handle_and_the_old_one_ends_nothing(store: Store) -> None:
    """Ending the old handle returns False, ends nothing and announces nothing."""
    events: list[SessionEvent] = []
    client, middleware = make_client(ROUTES, store=store, listeners=[events.append])
    client.get("/login")
    old = body(client.get("/handle"))
    client.get("/login")
    new = body(client.get("/handle"))
    assert new != old
    assert [info.handle for info in middleware.user_sessions("ann")] == [new]
    events.clear()
    assert middleware.end_session(old) is False
    assert events == []
    assert body(client.get("/")) == {"user": "ann"}


# -- another tab's request, racing the login -------------------------------------------------

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

    def refresh(
        self, key: str, expires_at: float, last_seen: float, *, version: int | None = None
    ) -> bool:
        return self.inner.refresh(key, expires_at, last_seen, version=version)

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


def _race(store: Store, when: When, other_path: str) -> tuple[Client, TestResponse, str]:
    """Log in (regenerate) a remembered session while the other tab requests
    *other_path*; return the login's client, its response and the store key of the
    session before the login."""
    window = _Window(store)
    tabs: dict[str, Client] = {}

    def other_tab() -> None:
        tabs["other"].get(other_path)

    def remember(session: Session, request: Request) -> str:
        session.remember = True  # a save would re-issue the cookie, an end expire it
        session["n"] = 1
        return "ok"

    def racing_login(session: Session, request: Request) -> str:
        assert session["n"] == 1  # loaded before the other tab's request
        if when == "handler":
            other_tab()
        else:
            window.hook = other_tab
        return login(session, request)

    def other(session: Session, request: Request) -> str:
        session["cart"] = ["book"]
        return "ok"

    client, _ = make_client(
        {**ROUTES, "/remember": remember, "/login": racing_login, "/other": other},
        store=window,
    )
    client.get("/remember")
    old = key_of(client)
    tabs["other"] = twin(client)
    response = client.get("/login?remember=1")
    assert window.hook is None, "the other tab's request never ran"
    return client, response, old


@pytest.mark.parametrize("when", ["handler", "write"])
def test_regenerate_keeps_the_other_tabs_write(store: Store, when: When) -> None:
    """A write landing while the login runs, or between its re-read of the old record
    and its write, is kept (docs/behaviour.rst, section "Regenerate")."""
    client, response, old = _race(store, when, "/other")
    assert response.status_code == 200
    new = key_of(client)
    assert new != old
    assert holds_no_session(store, old)
    assert body(client.get("/")) == {"n": 1, "user": "ann", "cart": ["book"]}
    assert [key for key, _ in store.user_records("ann")] == [new]


@pytest.mark.parametrize("when", ["handler", "write"])
def test_regenerate_does_not_undo_the_other_tabs_logout(store: Store, when: When) -> None:
    """A logout is never undone: the login's response deletes the cookie
    (docs/behaviour.rst, section "Concurrency")."""
    client, response, old = _race(store, when, "/logout")
    assert response.status_code == 200
    [header] = set_cookies(response)
    assert deletes_the_cookie(header)
    assert client.get_cookie("session_id") is None
    assert store.load(old) is None
    assert store.user_records("ann") == []
    assert live_sessions(store) == 0
    assert body(client.get("/")) == {}


def test_a_login_racing_old_cookies_never_deletes_the_new_one(store: Store) -> None:
    """Eight requests carrying the pre-login cookie run around a login, through a real
    threaded server.

    Whatever the order, none of their responses deletes the browser's cookie (which
    by then may be the new one), and none of them sees the logged-in session's data.
    """

    racers, each = 8, 10
    middleware = SessionMiddleware(
        routed_app({**ROUTES, "/incr": incr}),
        secret_key=SECRET,
        store=store,
        cleanup_interval=0,
    )
    with serving(middleware, threads=racers + 1) as address:
        browser = HTTPBrowser(address)
        assert browser.get("/incr?k=n")[0] == 200
        old_cookie = browser.cookie
        answers: list[tuple[int, list[str], Any]] = []
        logged_in = threading.Event()

        def race(n: int) -> None:
            if n == racers:
                answers.append(browser.get("/login"))
                logged_in.set()
                return
            stale = HTTPBrowser(address, old_cookie)
            try:
                for i in range(each):
                    path = f"/incr?k=r{n}" if i % 2 else "/peek"
                    answers.append(stale.get(path))
                    # Keep sending the old cookie, as a browser does until it has the new.
                    stale.cookie = old_cookie
                    if logged_in.is_set() and i >= each // 2:
                        break
            finally:
                stale.close()

        failures = run_together(racers + 1, race)
        assert not failures, failures[0]
        status, _, final = browser.get("/peek")
        browser.close()
    assert status == 200 and final["data"]["user"] == "ann"
    assert browser.cookie != old_cookie
    for status, headers, answer in answers:
        assert status == 200, answer
        for header in headers:
            assert "Max-Age=0" not in header and not header.startswith("session_id=;"), (
                f"a response deleted the session cookie: {header}"
            )
        if isinstance(answer, dict) and "data" in answer:
            assert "user" not in answer["data"], "a request with the old id saw the login"


# -- requests that still carry the old id: the grace period -------------------------------------


def _logged_in(store: Store, **options: Any) -> tuple[Client, str]:
    """A client logged in through a regenerate; return it and the cookie it had before."""
    client, _ = make_client(ROUTES, store=store, **options)
    client.get("/inc")
    before = cookie_value(client)
    client.get("/login")
    return client, before


def test_old_id_within_the_grace_gets_an_empty_session_and_no_cookie(store: Store) -> None:
    events: list[SessionEvent] = []
    client, old = _logged_in(store, listeners=[events.append])
    stale = with_cookie(client.application, old)
    response = stale.get("/peek")
    assert body(response) == GONE and set_cookies(response) == []
    # A write on it is dropped rather than stored under a cookie that would replace
    # the browser's new one, and announced with the session it held (it named none).
    response = stale.get("/put?key=late&value=1")
    assert response.status_code == 200 and set_cookies(response) == []
    assert live_sessions(store) == 1
    assert body(client.get("/")) == {"n": 1, "user": "ann"}
    conflicts = [event.handle for event in events if event.name == "conflict"]
    assert conflicts == [store_key(id_of(old))]


def test_ending_a_handle_listed_before_a_regenerate_leaves_its_tombstone(store: Store) -> None:
    # The session moved; deleting its tombstone would end nothing and let a request
    # still carrying the old cookie delete the browser's new one.
    client, middleware = make_client(ROUTES, store=store)
    client.get("/inc")
    old, old_handle = cookie_value(client), key_of(client)
    client.get("/login")
    assert not middleware.end_session(old_handle)
    assert set_cookies(with_cookie(client.application, old).get("/peek")) == []
    assert body(client.get("/")) == {"n": 1, "user": "ann"}


def test_old_id_after_the_grace_gets_its_cookie_expired(store: Store, clock: FakeClock) -> None:
    client, old = _logged_in(store)
    clock.advance(61)
    [header] = set_cookies(with_cookie(client.application, old).get("/"))
    assert deletes_the_cookie(header)


def test_no_grace_expires_the_old_cookie_at_once(store: Store) -> None:
    client, old = _logged_in(store, regenerate_grace=0)
    assert store.load(store_key(id_of(old))) is None
    [header] = set_cookies(with_cookie(client.application, old).get("/"))
    assert deletes_the_cookie(header)


@pytest.mark.parametrize("writes", [True, False], ids=["saved-after", "refreshed-after"])
def test_a_request_loaded_before_the_login_and_finished_after_sets_no_cookie(
    store: Store, clock: FakeClock, writes: bool
) -> None:
    """A request with the old id, loaded before the login, finds the session moved as
    it ends: its write is dropped, or its due refresh fails on the tombstone. Neither
    may read as an ended session whose cookie is expired: the browser holds the new one.
    """
    tabs: dict[str, Client] = {}
    slow = meanwhile(lambda: tabs["login"].get("/login"), **({"late": "1"} if writes else {}))
    client, _ = make_client({**ROUTES, "/slow": slow}, store=store)
    client.get("/inc")
    tabs["login"] = twin(client)
    if not writes:
        clock.advance(1801)  # past half of the default timeout: a read now refreshes
    response = client.get("/slow")
    assert response.status_code == 200 and set_cookies(response) == []
    assert body(tabs["login"].get("/")) == {"n": 1, "user": "ann"}


# -- session fixation ----------------------------------------------------------------------------


def test_planted_id_dies_at_login_and_the_attacker_cannot_revive_it(
    store: Store, clock: FakeClock
) -> None:
    """Session fixation: the attacker gets an id, plants it in the victim's browser,
    and waits for the victim to log in. Even a request of the attacker's that loaded
    the planted session before the login and saves after it must not bring it back.
    """
    tabs: dict[str, Client] = {}
    slow = meanwhile(lambda: tabs["victim"].get("/login?remember=1&flash=welcome"), evil="1")
    attacker, middleware = make_client({**ROUTES, "/slow": slow}, store=store)
    attacker.get("/inc")
    planted = cookie_value(attacker)
    victim = tabs["victim"] = with_cookie(middleware, planted)

    assert attacker.get("/slow").status_code == 200
    logged_in = cookie_value(victim)
    assert id_of(logged_in) != id_of(planted)
    assert holds_no_session(store, store_key(id_of(planted)))
    assert body(victim.get("/peek"))["data"] == {"n": 1, "user": "ann", "flash": "welcome"}

    assert body(with_cookie(middleware, planted).get("/peek")) == GONE
    # Within regenerate_grace, the replay's write is dropped and sets no cookie ...
    replayed = with_cookie(middleware, planted)
    assert set_cookies(replayed.get("/put?key=evil&value=2")) == []
    assert holds_no_session(store, store_key(id_of(planted)))
    # ... and after it, the replay starts a session of its own, under a new id.
    clock.advance(61)
    assert replayed.get("/put?key=evil&value=3").status_code == 200
    assert id_of(cookie_value(replayed)) not in (id_of(planted), id_of(logged_in))
    assert holds_no_session(store, store_key(id_of(planted)))
    assert body(victim.get("/peek"))["data"] == {"n": 1, "user": "ann"}  # the flash timed out

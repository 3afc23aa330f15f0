"""Expiry: idle and absolute timeouts, refreshes, remember-me, per-key timeouts,
``bind_ip``; all judged by the application's clock, which the ``clock`` fixture moves.

The behaviour is in docs/behaviour.rst, section "Expiry"; per-key timeouts in section
"The session object".
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from tests.helpers import (
    SECRET,
    CountingStore,
    FakeClock,
    body,
    counter,
    dump,
    make_client,
    read_only,
    session_id_of,
    set_cookies,
)
from wsgisession import ConfigError, Session, SessionMiddleware
from wsgisession.config import Config
from wsgisession.ids import store_key
from wsgisession.stores import Store

# -- the session's lifetime ----------------------------------------------------------


def test_idle_session_expires_and_its_cookie_is_expired(clock: FakeClock) -> None:
    seen: list[bool] = []

    def look(session: Session, request: Request) -> Any:
        seen.append(session.expired)
        return dict(session)

    client, _ = make_client({"/inc": counter, "/": look}, timeout=60)
    client.get("/inc")
    clock.advance(61)
    response = client.get("/")
    assert body(response) == {}
    assert seen == [True]
    [header] = set_cookies(response)
    assert "Max-Age=0" in header
    assert client.get_cookie("session_id") is None


def test_activity_keeps_an_idle_session_alive(clock: FakeClock) -> None:
    client, _ = make_client({"/inc": counter}, timeout=60)
    for expected in range(1, 6):
        assert body(client.get("/inc")) == expected
        clock.advance(45)


def test_read_past_half_life_refreshes_without_rewriting(clock: FakeClock) -> None:
    store = CountingStore()
    client, _ = make_client({"/inc": counter, "/": read_only}, store=store, timeout=100)
    client.get("/inc")
    key = store_key(session_id_of(client))
    before = store.load(key)
    assert before is not None
    clock.advance(30)
    store.calls.clear()
    client.get("/")
    assert "refresh" not in store.calls  # still more than half its life left
    clock.advance(30)
    response = client.get("/")
    assert store.calls.count("refresh") == 1 and "save" not in store.calls
    assert set_cookies(response) == []  # a browser-lifetime cookie needs no re-issue
    after = store.load(key)
    assert after is not None
    assert after.version == before.version and after.data == before.data
    assert after.expires_at == pytest.approx(clock() + 100, abs=1)
    clock.advance(60)
    assert body(client.get("/")) == 1


def test_save_every_request_extends_on_every_touch(clock: FakeClock) -> None:
    store = CountingStore()
    client, _ = make_client(
        {"/inc": counter, "/": read_only}, store=store, timeout=100, save_every_request=True
    )
    client.get("/inc")
    for _ in range(5):
        clock.advance(80)
        assert body(client.get("/")) == 1
    fresh = Client(client.application)
    fresh.get("/")
    assert store.count() == 1


def test_remember_makes_a_persistent_cookie_and_a_long_server_lifetime(
    clock: FakeClock,
) -> None:
    def login(session: Session, request: Request) -> str:
        session["user"] = "ann"
        session.remember = request.args.get("remember") == "1"
        return "ok"

    client, _ = make_client({"/login": login, "/": dump}, timeout=60, remember_me_timeout=86400)
    [header] = set_cookies(client.get("/login?remember=1"))
    assert "Max-Age=86400" in header
    clock.advance(3600)
    response = client.get("/")
    assert body(response) == {"user": "ann"}
    # Past half of a day? No: only an hour, so no refresh and no re-issue.
    assert set_cookies(response) == []
    clock.advance(50000)
    response = client.get("/")
    assert body(response) == {"user": "ann"}
    [reissued] = set_cookies(response)  # refreshed, so the persistent cookie moves too
    assert "Max-Age=86400" in reissued


def test_popping_messages_of_a_remembered_session_moves_its_cookie_too(clock: FakeClock) -> None:
    # pop_flashes() saves at once, which restarts the session's lifetime: the cookie's
    # Max-Age must say so, or the browser drops it before the session ends.
    def login(session: Session, request: Request) -> str:
        session.remember = True
        session.flash("welcome")
        return "ok"

    def pop(session: Session, request: Request) -> Any:
        return session.pop_flashes()

    client, _ = make_client({"/login": login, "/pop": pop}, timeout=60, remember_me_timeout=1000)
    client.get("/login")
    clock.advance(100)
    response = client.get("/pop")
    assert body(response) == [["message", "welcome"]]
    [header] = set_cookies(response)
    assert "Max-Age=1000" in header


def test_turning_remember_off_reissues_a_browser_cookie(clock: FakeClock) -> None:
    def remember(session: Session, request: Request) -> str:
        session.remember = request.args["on"] == "1"
        session["x"] = 1
        return "ok"

    client, _ = make_client({"/r": remember, "/": dump}, timeout=60)
    assert "Max-Age" in set_cookies(client.get("/r?on=1"))[0]
    [header] = set_cookies(client.get("/r?on=0"))
    assert "Max-Age" not in header
    clock.advance(61)
    assert body(client.get("/")) == {}


def test_absolute_timeout_ends_even_an_active_session(clock: FakeClock) -> None:
    client, _ = make_client({"/inc": counter}, timeout=60, absolute_timeout=100)
    assert body(client.get("/inc")) == 1
    clock.advance(50)
    assert body(client.get("/inc")) == 2
    clock.advance(40)
    assert body(client.get("/inc")) == 3
    clock.advance(11)
    assert body(client.get("/inc")) == 1


# -- per-key timeouts -------------------------------------------------------------------


def test_per_key_timeout(clock: FakeClock) -> None:
    def flash(session: Session, request: Request) -> str:
        session.set("flash", "saved!", timeout=10)
        session["keep"] = 1
        return "ok"

    def look(session: Session, request: Request) -> Any:
        return {
            "in": "flash" in session,
            "get": session.get("flash", "gone"),
            "len": len(session),
            "keys": sorted(session),
        }

    def overwrite(session: Session, request: Request) -> str:
        session["flash"] = "forever"
        return "ok"

    client, _ = make_client({"/flash": flash, "/": look, "/overwrite": overwrite})
    client.get("/flash")
    seen = {"in": True, "get": "saved!", "len": 2, "keys": ["flash", "keep"]}
    assert body(client.get("/")) == seen
    clock.advance(11)
    assert body(client.get("/")) == {"in": False, "get": "gone", "len": 1, "keys": ["keep"]}
    client.get("/flash")
    client.get("/overwrite")
    clock.advance(11)
    assert body(client.get("/"))["in"] is True


def test_per_key_timeout_raises_key_error(clock: FakeClock) -> None:
    seen: list[str] = []

    def look(session: Session, request: Request) -> str:
        try:
            session["flash"]
        except KeyError:
            seen.append("missing")
        return "ok"

    def flash(session: Session, request: Request) -> str:
        session.set("flash", "x", timeout=5)
        return "ok"

    client, _ = make_client({"/flash": flash, "/": look})
    client.get("/flash")
    clock.advance(6)
    client.get("/")
    assert seen == ["missing"]


def test_a_key_timeout_is_capped_by_the_session_lifetime(clock: FakeClock) -> None:
    """A key's deadline is the earlier of ``now + timeout`` and the end of the
    session's lifetime when it is set (docs/behaviour.rst, section "The session
    object")."""

    def put_token(session: Session, request: Request) -> str:
        session.set("token", "t", timeout=10_000)  # session lifetime is 100
        return "ok"

    client, _ = make_client({"/put": put_token, "/inc": counter, "/": dump}, timeout=100)
    client.get("/put")
    for _ in range(3):
        clock.advance(40)
        client.get("/inc")  # keeps the session alive
    # 120 s after set(): the session lives on, but the key was capped at 100 s.
    assert body(client.get("/")) == {"n": 3}


@pytest.mark.parametrize(
    "timeout",
    [
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
        pytest.param(0, id="zero"),
        pytest.param(-1, id="negative"),
        pytest.param(315_360_001, id="over-ten-years"),
        pytest.param(10**400, id="int-beyond-float"),
        pytest.param("10", id="string"),
        pytest.param(True, id="bool"),
    ],
)
def test_a_key_timeout_that_is_not_positive_seconds_of_at_most_ten_years_is_refused(
    timeout: Any,
) -> None:
    """``s.set(k, v, timeout=...)`` raises ValueError for anything else, and the key is
    not set (docs/behaviour.rst, section "The session object")."""
    errors: list[Exception] = []

    def put_timed(session: Session, request: Request) -> str:
        try:
            session.set("k", "v", timeout=timeout)
        except ValueError as exc:
            errors.append(exc)
        return "ok"

    client, _ = make_client({"/put": put_timed, "/": dump})
    client.get("/put")
    assert len(errors) == 1 and "at most 315360000 (ten years)" in str(errors[0])
    assert body(client.get("/")) == {}


# -- bind_ip -----------------------------------------------------------------------------


def test_bind_ip_treats_another_address_as_expired_and_leaves_the_session_alone() -> None:
    """The other address gets a fresh session and no expiring Set-Cookie: a phone that
    switched networks and comes back still has its session."""
    client, _ = make_client({"/inc": counter, "/": dump}, bind_ip=True)
    client.get("/inc", environ_overrides={"REMOTE_ADDR": "10.0.0.1"})
    moved = client.get("/", environ_overrides={"REMOTE_ADDR": "10.0.0.2"})
    assert body(moved) == {}
    assert set_cookies(moved) == []
    assert body(client.get("/", environ_overrides={"REMOTE_ADDR": "10.0.0.1"})) == {"n": 1}


# -- anonymous_timeout -----------------------------------------------------------------


def _link(session: Session, request: Request) -> str:
    session.user_id = request.args.get("user") or None
    return "ok"


def _remember(session: Session, request: Request) -> str:
    session.remember = True
    session["n"] = 1
    return "ok"


ANONYMOUS = {"timeout": 3600, "anonymous_timeout": 60}


def _anonymous_client(store: Store) -> tuple[Client, Store]:
    routes = {"/inc": counter, "/": dump, "/link": _link, "/remember": _remember}
    client, _ = make_client(routes, store=store, **ANONYMOUS)
    return client, store


def _lives_for(client: Client, store: Store, clock: FakeClock) -> float:
    record = store.load(store_key(session_id_of(client)))
    assert record is not None
    return record.expires_at - clock()


def test_a_session_without_a_user_lives_anonymous_timeout(store: Store, clock: FakeClock) -> None:
    client, _ = _anonymous_client(store)
    client.get("/inc")
    assert _lives_for(client, store, clock) == pytest.approx(60, abs=1)
    clock.advance(61)
    assert body(client.get("/")) == {}


def test_linking_a_user_switches_to_timeout_and_unlinking_back(
    store: Store, clock: FakeClock
) -> None:
    client, _ = _anonymous_client(store)
    client.get("/inc")
    client.get("/link?user=ann")
    assert _lives_for(client, store, clock) == pytest.approx(3600, abs=1)
    clock.advance(600)
    assert body(client.get("/inc")) == 2
    client.get("/link?user=")
    assert _lives_for(client, store, clock) == pytest.approx(60, abs=1)
    clock.advance(61)
    assert body(client.get("/")) == {}


def test_an_anonymous_session_read_past_half_its_own_life_is_refreshed(
    clock: FakeClock,
) -> None:
    store = CountingStore()
    client, _ = _anonymous_client(store)
    client.get("/inc")
    clock.advance(20)
    store.calls.clear()
    client.get("/")
    assert "refresh" not in store.calls
    clock.advance(15)  # 35 s in: less than half of 60 left
    client.get("/")
    assert store.calls.count("refresh") == 1
    assert _lives_for(client, store, clock) == pytest.approx(60, abs=1)


def test_a_remembered_session_keeps_remember_me_timeout_without_a_user(
    clock: FakeClock,
) -> None:
    store = CountingStore()
    client, _ = _anonymous_client(store)
    client.get("/remember")
    assert _lives_for(client, store, clock) == pytest.approx(2592000, abs=1)


def test_a_key_timeout_is_capped_by_the_anonymous_lifetime(clock: FakeClock) -> None:
    def short(session: Session, request: Request) -> str:
        session.set("k", 1, timeout=600)
        return "ok"

    client, _ = make_client({"/short": short, "/": dump}, **ANONYMOUS)
    client.get("/short")
    clock.advance(30)
    assert body(client.get("/")) == {"k": 1}
    clock.advance(31)
    assert body(client.get("/")) == {}


def test_anonymous_timeout_longer_than_timeout_is_refused() -> None:
    with pytest.raises(ConfigError, match="'anonymous_timeout' \\(7200\\) must not exceed"):
        Config.from_options(secret_key=SECRET, timeout=3600, anonymous_timeout=7200)


def test_a_session_that_expires_while_its_body_streams_is_not_written_back(
    store: Store, clock: FakeClock
) -> None:
    # Every store reads the application's clock: the late save finds the session ended.
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        session = environ["session"]
        if environ["PATH_INFO"] == "/set":
            session["a"] = 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] != "/stream":
            return [repr(sorted(session.items())).encode()]

        def body() -> Any:
            dict(session)
            yield b"."
            clock.advance(150)
            session["late"] = 1
            yield b"."

        return body()

    client = Client(
        SessionMiddleware(app, secret_key=SECRET, store=store, cleanup_interval=0, timeout=100)
    )
    client.get("/set")
    client.get("/stream", buffered=True)
    assert client.get("/").get_data(as_text=True) == "[]"


def test_a_read_overlapping_a_save_that_forgets_remember_me_does_not_undo_it(
    store: Store, clock: FakeClock
) -> None:
    # The read is due for a refresh by the remembered lifetime it loaded; the save
    # since set the shorter one, which that refresh must leave alone.
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session, path = environ["session"], environ["PATH_INFO"]
        if path == "/login":
            session["user"] = "ann"
            session.remember = True
        elif path == "/forget":
            session.remember = False
        elif path == "/slow":
            dict(session)  # loaded, remembered, past half its lifetime
            Client(middleware, use_cookies=False).get(
                "/forget", headers={"Cookie": environ["HTTP_COOKIE"]}
            )
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(sorted(session.items())).encode()]

    middleware = SessionMiddleware(
        app,
        secret_key=SECRET,
        store=store,
        cleanup_interval=0,
        timeout=100,
        remember_me_timeout=1000,
    )
    client = Client(middleware)
    client.get("/login")
    clock.advance(600)
    assert set_cookies(client.get("/slow")) == []  # no persistent cookie re-sent
    clock.advance(150)
    assert client.get("/").get_data(as_text=True) == "[]"  # ended 100 s after /forget

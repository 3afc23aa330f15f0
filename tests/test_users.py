"""Sessions per user: the user index, listing and ending a user's sessions, the cap.

The behaviour is in docs/behaviour.rst, section "Users". How each store keeps its index
is tested with the store (``stores/test_file_users.py``, ``stores/test_redis_users.py``);
the command line's ``sessions`` and ``logout`` in ``test_cli.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from tests.helpers import (
    PATIENCE,
    SECRET,
    USER_ROUTES,
    FakeClock,
    body,
    cookie_value,
    dump,
    handle_of,
    key_of,
    log_in,
    make_client,
    user_app,
)
from wsgisession import Session, SessionMiddleware
from wsgisession.events import SessionEvent
from wsgisession.stores import Record, Store
from wsgisession.stores.memory import MemoryStore
from wsgisession.users import check_user_id

# -- user ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(42, TypeError, id="int"),
        pytest.param("", ValueError, id="empty"),
        pytest.param("\ud800", ValueError, id="lone-surrogate"),
    ],
)
def test_bad_user_ids_are_refused(value: Any, error: type[Exception]) -> None:
    caught: list[BaseException] = []

    def set_user(session: Session, request: Request) -> str:
        try:
            session.user_id = value
        except Exception as exc:
            caught.append(exc)
        return "ok"

    client, _ = make_client({"/": set_user})
    client.get("/")
    assert len(caught) == 1 and isinstance(caught[0], error)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 257, id="257-characters"),
        pytest.param("ann\x00", id="nul"),
        pytest.param("ann\nbob", id="newline"),
        pytest.param("ann\x1b[31m", id="escape"),
        pytest.param("ann\x85", id="c1-control"),
        pytest.param("ann\x7f", id="del"),
        pytest.param("\ud800", id="lone-surrogate"),
    ],
)
def test_user_ids_outside_the_rules_are_a_value_error(value: str) -> None:
    with pytest.raises(ValueError) as raised:
        check_user_id(value)
    assert value == "" or value not in str(raised.value)


def link(session: Session, request: Request) -> str:
    """Link the session to the user ``?user=``."""
    session.user_id = request.args["user"]
    return "ok"


def test_a_user_id_of_256_characters_works_and_257_is_refused_on_every_store(
    store: Store,
) -> None:
    """The rules are checked before any store sees the id, so every store holds the
    same ids: a NUL used to pass the check and then fail on PostgreSQL, and 300
    characters on PostgreSQL's and MariaDB's VARCHAR(255)."""
    user = "é" * 128 + "u" * 128
    client, middleware = make_client({"/link": link}, store=store)
    assert client.get("/link", query_string={"user": user}).status_code == 200
    assert [info.handle for info in middleware.user_sessions(user)] == [key_of(client)]
    for refused in ("ann\x00", user + "u"):
        with pytest.raises(ValueError):
            client.get("/link", query_string={"user": refused})
    assert [info.handle for info in middleware.user_sessions(user)] == [key_of(client)]


def test_user_sessions_of_a_user_id_no_store_can_hold_is_a_value_error(store: Store) -> None:
    """A lone surrogate (what undecodable bytes become) is refused before any store sees
    it, never a driver's UnicodeEncodeError (docs/behaviour.rst, section "Users")."""
    _, middleware = make_client({}, store=store)
    with pytest.raises(ValueError, match="valid Unicode"):
        middleware.user_sessions("\udcff")


# -- listing and ending a user's sessions ----------------------------------------------


def test_log_out_other_devices_with_three_clients(store: Store) -> None:
    holder: dict[str, SessionMiddleware] = {}

    def log_out_others(session: Session, request: Request) -> int:
        user = session.user_id
        assert user is not None
        return holder["middleware"].end_user_sessions(user, keep=session)

    _, middleware = make_client({**USER_ROUTES, "/others": log_out_others}, store=store)
    holder["middleware"] = middleware
    phone, laptop, tablet = (log_in(middleware) for _ in range(3))
    log_in(middleware, user="bob")
    assert len(middleware.user_sessions("ann")) == 3

    assert body(laptop.get("/others")) == 2
    assert body(laptop.get("/"))["user"] == "ann"
    assert body(phone.get("/"))["user"] is None
    assert body(tablet.get("/"))["user"] is None
    assert [info.handle for info in middleware.user_sessions("ann")] == [handle_of(laptop)]
    assert len(middleware.user_sessions("bob")) == 1


def test_end_user_sessions_keeps_a_session_the_handler_has_not_touched_yet() -> None:
    """``keep`` may be the handler's own session before it was read: a handler that
    takes the user id from elsewhere (an auth header, a path) stays logged in."""
    holder: dict[str, SessionMiddleware] = {}

    def link(session: Session, request: Request) -> str:
        session.user_id = "ann"
        return "ok"

    def log_out_others(session: Session, request: Request) -> int:
        return holder["m"].end_user_sessions("ann", keep=session)

    client, middleware = make_client({"/link": link, "/others": log_out_others, "/": dump})
    holder["m"] = middleware
    client.get("/link")
    for _ in range(2):
        Client(middleware).get("/link")
    assert body(client.get("/others")) == 2
    assert [info.handle for info in middleware.user_sessions("ann")] == [key_of(client)]


def test_user_sessions_lists_newest_first_with_details(store: Store, clock: FakeClock) -> None:
    middleware = user_app(store, track_clients=True, remember_me_timeout=86400)
    first = log_in(middleware, HTTP_USER_AGENT="A" * 300, REMOTE_ADDR="10.0.0.1")
    clock.advance(5)
    second = Client(middleware)
    second.get("/login?user=ann&remember=1", environ_overrides={"REMOTE_ADDR": "10.0.0.2"})
    infos = middleware.user_sessions("ann")
    assert [info.handle for info in infos] == [handle_of(second), handle_of(first)]
    newest, oldest = infos
    assert newest.remembered and not oldest.remembered
    assert oldest.user_agent == "A" * 200
    assert (oldest.remote_addr, newest.remote_addr) == ("10.0.0.1", "10.0.0.2")
    assert newest.created_at > oldest.created_at
    assert newest.expires_at > newest.last_seen >= newest.created_at


@pytest.mark.parametrize(
    "agent",
    ["Navigateur \xe9t\xe9 \u2603", "lone \udc80 surrogate"],
    ids=["non-ascii", "surrogate"],
)
def test_any_user_agent_string_is_kept(store: Store, agent: str) -> None:
    # A server's environ may hold any str, a lone surrogate included, which UTF-8 can't
    # encode: the session is saved all the same, and the agent listed as it came.
    middleware = user_app(store, track_clients=True)
    client = log_in(middleware, HTTP_USER_AGENT=agent)
    [info] = middleware.user_sessions("ann")
    assert info.user_agent == agent
    assert body(client.get("/"))["handle"] == info.handle


def test_details_are_absent_without_track_clients(store: Store) -> None:
    middleware = user_app(store)
    log_in(middleware, HTTP_USER_AGENT="browser", REMOTE_ADDR="10.0.0.1")
    [info] = middleware.user_sessions("ann")
    assert info.user_agent is None and info.remote_addr is None


def test_end_session_by_handle(store: Store) -> None:
    middleware = user_app(store)
    client = log_in(middleware)
    handle = handle_of(client)
    assert middleware.end_session(handle)
    assert not middleware.end_session(handle)
    assert middleware.user_sessions("ann") == []
    assert body(client.get("/"))["user"] is None


@pytest.mark.parametrize("value", ["", "nothex" * 8, "A" * 64, "../" * 21 + "x", "0" * 63])
def test_end_session_with_something_that_is_not_a_handle_ends_nothing(value: str) -> None:
    assert not user_app().end_session(value)


def test_invalidate_and_unlinking_remove_the_session_from_the_list(store: Store) -> None:
    middleware = user_app(store)
    leaving = log_in(middleware)
    forgetting = log_in(middleware)
    staying = log_in(middleware)
    leaving.get("/logout")
    forgetting.get("/forget")
    assert [info.handle for info in middleware.user_sessions("ann")] == [handle_of(staying)]


def test_expired_session_is_not_listed_without_cleanup(store: Store, clock: FakeClock) -> None:
    middleware = user_app(store, timeout=60)
    log_in(middleware)
    clock.advance(61)
    assert middleware.user_sessions("ann") == []


def test_a_session_past_an_absolute_timeout_set_since_is_not_listed(
    store: Store, clock: FakeClock
) -> None:
    # Its record, written before the option, expires later; the session is over all
    # the same, and its cookie finds nothing.
    before = log_in(user_app(store))
    clock.advance(120)
    middleware = user_app(store, absolute_timeout=60)
    assert middleware.user_sessions("ann") == []
    before.application = middleware
    assert body(before.get("/"))["user"] is None


def test_last_seen_moves_on_save_and_refresh(store: Store, clock: FakeClock) -> None:
    middleware = user_app(store, timeout=100)
    client = log_in(middleware)
    [before] = middleware.user_sessions("ann")
    clock.advance(10)
    client.get("/inc")
    [saved] = middleware.user_sessions("ann")
    assert saved.last_seen == pytest.approx(before.last_seen + 10, abs=1)
    clock.advance(60)
    client.get("/")  # read past half its life: refreshed
    [refreshed] = middleware.user_sessions("ann")
    assert refreshed.last_seen == pytest.approx(saved.last_seen + 60, abs=1)
    assert refreshed.expires_at > saved.expires_at


# -- max_sessions_per_user ---------------------------------------------------------------


def test_cap_per_user_ends_the_oldest(store: Store, clock: FakeClock) -> None:
    middleware = user_app(store, max_sessions_per_user=2)
    clients = []
    for _ in range(3):
        clients.append(log_in(middleware))
        clock.advance(1)
    assert len(middleware.user_sessions("ann")) == 2
    assert body(clients[0].get("/"))["user"] is None
    assert body(clients[1].get("/"))["user"] == "ann"
    assert body(clients[2].get("/"))["user"] == "ann"


def test_logins_racing_past_the_cap_end_each_others_sessions_only_once(store: Store) -> None:
    # Both save before either checks the cap: ending each other's sessions, the two
    # logins would log the user out everywhere.
    both_saved = threading.Barrier(2)

    def wait_for_the_other(event: SessionEvent) -> None:
        if event.name == "created":
            both_saved.wait(timeout=PATIENCE)

    middleware = user_app(store, max_sessions_per_user=1, listeners=[wait_for_the_other])
    logins = [threading.Thread(target=log_in, args=(middleware,)) for _ in range(2)]
    for login in logins:
        login.start()
    for login in logins:
        login.join(PATIENCE)
    assert len(middleware.user_sessions("ann")) == 1


def test_any_number_of_logins_racing_past_the_cap_leave_at_most_one_over_it(
    clock: FakeClock,
) -> None:
    # Logins save in the reverse order of their clocks, each checking the cap at once:
    # each spared every session saved after its own, and three logins left three
    # sessions under a cap of one.
    arrived: dict[str, threading.Event] = {}
    gates: dict[str, threading.Event] = {}

    class GatedStore(MemoryStore):
        """A real memory store whose saves for a logging-in thread wait their turn."""

        def save(self, key: str, record: Record, **kwargs: Any) -> bool:
            name = threading.current_thread().name
            if name in gates and record.user_id == "ann":
                arrived[name].set()
                assert gates[name].wait(PATIENCE)
            return super().save(key, record, **kwargs)

    middleware = user_app(GatedStore(), max_sessions_per_user=1)
    logins = []
    for name in ("first", "second", "third"):
        arrived[name], gates[name] = threading.Event(), threading.Event()
        login = threading.Thread(target=log_in, args=(middleware,), name=name)
        login.start()
        logins.append(login)
        assert arrived[name].wait(PATIENCE)
        clock.advance(1)
    for login in reversed(logins):
        gates[login.name].set()
        login.join(PATIENCE)
    assert 1 <= len(middleware.user_sessions("ann")) <= 2


def test_a_failed_request_that_links_a_user_ends_none_of_their_sessions(
    clock: FakeClock,
) -> None:
    # Nothing of a failed request is saved, so the user it linked has no new session.
    def switch_then_fail(session: Session, request: Request) -> str:
        session.user_id = "bob"
        raise RuntimeError("the switch failed")

    store = MemoryStore()
    before = []
    for _ in range(3):  # before the cap was configured
        before.append(log_in(user_app(store)))
        clock.advance(1)
    switching, capped = make_client(
        {**USER_ROUTES, "/switch": switch_then_fail}, store=store, max_sessions_per_user=2
    )
    switching.set_cookie("session_id", cookie_value(before[2]))
    with pytest.raises(RuntimeError, match="the switch failed"):
        switching.get("/switch")
    assert len(capped.user_sessions("ann")) == 3


def test_max_sessions_per_user_holds_for_a_link_made_while_the_body_is_produced() -> None:
    """A user linked during the body still counts for ``max_sessions_per_user``
    (docs/behaviour.rst, section "Saving")."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = environ["session"]
        session["n"] = 1  # stored at start_response
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"welcome"
        session.user_id = "ann"  # linked while the body is produced

    middleware = SessionMiddleware(
        app, secret_key=SECRET, store="memory://", max_sessions_per_user=1, cleanup_interval=0
    )
    for _ in range(3):
        Client(middleware).get("/", buffered=True)
    assert len(middleware.user_sessions("ann")) == 1

"""Review findings: each test shows a place where behaviour differs from SPEC.md or README.

Every test here is expected to FAIL until the finding it names is fixed.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from tests.conftest import SERVER, FakeClock, open_test_store
from tests.helpers import SECRET, body, cookie_value, counter, dump, make_client, twin
from wsgisession import ConfigError, Session, SessionMiddleware, StoreError, cli
from wsgisession.events import SessionEvent
from wsgisession.ids import store_key
from wsgisession.stores.base import Record, Store
from wsgisession.stores.memory import MemoryStore


def _sid(client: Client) -> str:
    return cookie_value(client).rsplit(".", 1)[0]


def _show(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    session = environ["session"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [repr((sorted(session.items()), session.expired)).encode()]


# -- 1. A raise after start_response: changes and regenerate() are already applied ---


def test_regenerate_then_raise_after_start_response_keeps_the_old_session() -> None:
    """SPEC 2 regenerate(): "if the request raises ..., neither happens".

    The new record is written and the old one deleted inside start_response, so an
    app that raises after start_response (the server still answers 500, no body was
    sent) loses the old session, and the new cookie never reaches the client.
    """

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/login":
            session["n"] = 1
        elif environ["PATH_INFO"] == "/boom":
            session.regenerate()
            start_response("200 OK", [("Content-Type", "text/plain")])
            raise RuntimeError("the app fails after start_response")
        return _show(environ, start_response)

    client = Client(
        SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    )
    client.get("/login")
    with pytest.raises(RuntimeError):
        client.get("/boom")
    # The client still holds the old cookie: its session must still be there.
    assert client.get("/").get_data(as_text=True) == "([('n', 1)], False)"


def test_changes_are_not_saved_when_the_app_raises_after_start_response() -> None:
    """SPEC 3.5: "If the app raises ..., the session changes of that request are not saved"."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/login":
            session["n"] = 1
        elif environ["PATH_INFO"] == "/boom":
            session["n"] = 2
            start_response("200 OK", [("Content-Type", "text/plain")])
            raise RuntimeError("the app fails after start_response")
        return _show(environ, start_response)

    client = Client(
        SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    )
    client.get("/login")
    with pytest.raises(RuntimeError):
        client.get("/boom")
    assert client.get("/").get_data(as_text=True) == "([('n', 1)], False)"


def _environ(cookie: str | None = None, path: str = "/") -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "wsgi.url_scheme": "http",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
    }
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    return environ


def _run(application: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """Call *application* like a PEP 3333 server that has sent nothing yet."""
    sent: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        sent[:] = [(status, headers)]  # nothing was written yet: the last call wins
        return lambda data: None

    response = application(environ, start_response)
    try:
        for _ in response:
            pass
    finally:
        getattr(response, "close", lambda: None)()
    return sent[0]


def test_error_page_through_exc_info_still_expires_the_logged_out_cookie() -> None:
    """SPEC 3.6: an invalidation sends the expired cookie, also on a 5xx (SPEC 2).

    An app that logs out, starts a 200, then replaces it with an error page through
    start_response(..., exc_info) (PEP 3333) gets a response without the expiring
    Set-Cookie: the middleware put it only on the first, discarded, header list.
    """

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/login":
            session["n"] = 1
            return _show(environ, start_response)
        session.invalidate()
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise RuntimeError("rendering failed")
        except RuntimeError:
            start_response(
                "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"error page"]

    middleware = SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    _, headers = _run(middleware, _environ(path="/login"))
    cookie = next(v for k, v in headers if k == "Set-Cookie").split(";")[0]
    status, headers = _run(middleware, _environ(cookie, "/logout"))
    assert status.startswith("500")
    cookies = [v for k, v in headers if k == "Set-Cookie"]
    assert any(c.startswith("session_id=;") for c in cookies), headers


# -- 2. Per-key timeouts ----------------------------------------------------------------


def test_key_timeout_is_capped_by_the_session_lifetime(clock: FakeClock) -> None:
    """SPEC 2 set(): "A key timeout longer than the session's own lifetime is capped"."""

    def put(session: Session, request: Request) -> str:
        session.set("token", "t", timeout=10_000)  # session lifetime is 100
        return "ok"

    def touch(session: Session, request: Request) -> str:
        session["tick"] = session.get("tick", 0) + 1  # keeps the session alive
        return "ok"

    client, _ = make_client({"/put": put, "/touch": touch, "/": dump}, timeout=100)
    client.get("/put")
    for _ in range(3):
        clock.advance(40)
        client.get("/touch")
    # 120 s after set(): the session lives on, but the key was capped at 100 s.
    assert "token" not in body(client.get("/"))


def test_nan_key_timeout_is_refused() -> None:
    """SPEC 2 set(): timeout is seconds; NaN is accepted and hides the key at once."""

    def put(session: Session, request: Request) -> str:
        with pytest.raises(ValueError):
            session.set("k", "v", timeout=math.nan)
        return "ok"

    client, _ = make_client({"/put": put})
    client.get("/put")


# -- 3. regenerate() racing another request ---------------------------------------------


class _HookStore(MemoryStore):
    """Runs ``hook`` once, right before the save that replaces the old record."""

    def __init__(self) -> None:
        super().__init__()
        self.hook: Any = None

    def save(self, key: str, record: Record, **kwargs: Any) -> bool:
        hook, self.hook = (self.hook, None) if kwargs.get("replaces") else (None, self.hook)
        if hook is not None:
            hook()
        return super().save(key, record, **kwargs)


def _regenerate_race(other_path: str) -> tuple[Client, Client]:
    store = _HookStore()

    def login(session: Session, request: Request) -> str:
        session.regenerate()
        session["user"] = "ann"
        return "ok"

    def other(session: Session, request: Request) -> str:
        session["cart"] = ["book"]
        return "ok"

    def logout(session: Session, request: Request) -> str:
        session.invalidate()
        return "ok"

    client, middleware = make_client(
        {"/inc": counter, "/login": login, "/other": other, "/logout": logout, "/": dump},
        store=store,
    )
    client.get("/inc")
    tab = twin(client)
    # The other tab's request lands between the login's re-read and its write.
    store.hook = lambda: tab.get(other_path)
    client.get("/login")
    return client, tab


def test_regenerate_keeps_a_write_that_lands_between_its_reread_and_its_write() -> None:
    """SPEC 3.7: different keys both kept; "Nothing else is lost"."""
    client, _ = _regenerate_race("/other")
    assert body(client.get("/")) == {"n": 1, "user": "ann", "cart": ["book"]}


def test_regenerate_does_not_undo_a_logout_that_lands_before_its_write() -> None:
    """SPEC 2 invalidate(): "A logout is never undone"."""
    client, _ = _regenerate_race("/logout")
    assert body(client.get("/")) == {}


# -- 4. Headers for a session first used while the body is produced --------------------


def test_session_first_read_after_the_headers_went_out_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SPEC 3.6: every response of a request that accessed the session has Vary: Cookie.

    A streaming body that first reads the session after its headers went out can't get
    Vary any more. Adding Vary to every response with a session cookie would make every
    page of a signed-in user uncacheable, so the developer is warned instead (README).
    """

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/login":
            session["user"] = "ann"
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"ok"
            return
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"hello "
        yield str(session.get("user")).encode()

    client = Client(
        SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    )
    client.get("/login")
    with caplog.at_level(logging.WARNING, logger="wsgisession"):
        response = client.get("/page")
        assert response.get_data(as_text=True) == "hello ann"
    assert "Vary" not in response.headers
    assert "no Vary: Cookie" in caplog.text


def test_client_disconnect_during_the_body_saves_no_late_changes() -> None:
    """README decision: a body that fails while streaming (the iterator raises, or the
    client disconnects) counts as a failed request: changes during the body are not saved.

    A disconnect is the server calling close() before the iterable is exhausted; the
    late change is saved anyway.
    """
    store = MemoryStore()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = environ["session"]
        session["n"] = 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one"
        session["late"] = "yes"
        yield b"two"
        yield b"three"

    middleware = SessionMiddleware(app, secret_key=SECRET, store=store, cleanup_interval=0)
    environ = _environ()
    response = middleware(environ, lambda status, headers, exc_info=None: None)
    chunks = iter(response)
    assert next(chunks) == b"one"
    assert next(chunks) == b"two"
    response.close()  # the client went away: the server stops and closes
    session = environ["session"]
    record = store.load(store_key(session.id))
    assert record is not None
    assert b"late" not in record.data


def test_session_first_read_while_the_body_is_produced_is_still_refreshed(
    clock: FakeClock,
) -> None:
    """SPEC 3.4: a read session past half its lifetime is refreshed.

    A session first read after start_response (a streaming page) is never refreshed
    when the response closes, so a user active only on such pages is logged out
    after ``timeout``. A refresh of a non-persistent session needs no header.
    """
    store = MemoryStore()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/login":
            session["user"] = "ann"
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield str(session.get("user")).encode()

    client = Client(
        SessionMiddleware(app, secret_key=SECRET, store=store, timeout=100, cleanup_interval=0)
    )
    client.get("/login", buffered=True)
    key = store_key(_sid(client))
    before = store.load(key)
    assert before is not None
    clock.advance(60)  # 40 s left: below half of 100
    assert client.get("/page", buffered=True).get_data(as_text=True) == "ann"
    after = store.load(key)
    assert after is not None
    assert after.expires_at > before.expires_at


def test_max_sessions_per_user_holds_for_a_link_made_while_the_body_is_produced() -> None:
    """SPEC 7 max_sessions_per_user: linking a session to a user who already has that
    many ends the oldest. A link made after start_response is saved at close, but
    the cap is not enforced there (finish_late skips enforce_cap).
    """

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


# -- 5. Listener events -----------------------------------------------------------------


def test_ending_a_handle_that_ends_nothing_emits_no_invalidated_event() -> None:
    """SPEC 7: regenerate() gives a new handle and "the old one ends nothing".

    end_session(old) returns False, yet listeners hear "invalidated" for it.
    """
    events: list[SessionEvent] = []

    def login(session: Session, request: Request) -> str:
        session.regenerate()
        return "ok"

    def handle(session: Session, request: Request) -> Any:
        return session.handle

    client, middleware = make_client(
        {"/inc": counter, "/login": login, "/handle": handle}, listeners=[events.append]
    )
    client.get("/inc")
    old = body(client.get("/handle"))
    client.get("/login")
    events.clear()
    assert middleware.end_session(old) is False
    assert [e.name for e in events] == []


def test_end_user_sessions_keeps_a_session_the_handler_has_not_touched_yet() -> None:
    """SPEC 7: end_user_sessions(user_id, keep=Session) ends every session *except* keep.

    A handler that takes the user id from elsewhere (an auth header, a path) and
    passes its own, not yet loaded, session as keep logs itself out as well:
    Session._handles() reports nothing for a session that is not loaded.
    """
    holder: dict[str, SessionMiddleware] = {}

    def login(session: Session, request: Request) -> str:
        session.user_id = "ann"
        return "ok"

    def log_out_others(session: Session, request: Request) -> int:
        return holder["m"].end_user_sessions("ann", keep=session)

    client, middleware = make_client({"/login": login, "/others": log_out_others, "/": dump})
    holder["m"] = middleware
    client.get("/login")
    for _ in range(2):
        Client(middleware).get("/login")
    assert body(client.get("/others")) == 2
    assert len(middleware.user_sessions("ann")) == 1


def test_bind_ip_mismatch_does_not_expire_the_cookie_of_a_session_that_lives_on() -> None:
    """SPEC 4 bind_ip: "treated as expired for that request; the stored session is left
    alone". SPEC 3.6 sends an expiring Set-Cookie only for a session that is *gone*.

    A read from another address (a phone switching networks) gets an expiring
    Set-Cookie, so the browser drops a cookie whose session is still valid from the
    original address.
    """
    client, _ = make_client({"/inc": counter, "/": dump}, bind_ip=True)
    client.get("/inc", environ_base={"REMOTE_ADDR": "192.0.2.1"})
    response = client.get("/", environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert body(response) == {}
    assert response.headers.getlist("Set-Cookie") == []
    assert body(client.get("/", environ_base={"REMOTE_ADDR": "192.0.2.1"})) == {"n": 1}


@pytest.fixture(
    params=[pytest.param("postgresql", marks=SERVER), pytest.param("mariadb", marks=SERVER)]
)
def server_sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh SQL store on a database server (skipped when the server is down)."""
    yield from open_test_store(request.param, request, tmp_path)


def test_a_long_user_id_is_refused_or_stored_alike_on_every_store(
    server_sql_store: Store,
) -> None:
    """SPEC 7: s.user_id is any ``str``. A 300-character id works on the memory, file,
    SQLite and Redis stores, but VARCHAR(255) makes every save of that session fail
    with StoreError (a 500) on PostgreSQL and MariaDB. The setter should refuse what
    some store can't hold, or the column should hold it.
    """
    user = "u" * 300

    def login(session: Session, request: Request) -> str:
        try:
            session.user_id = user
        except ValueError:
            return "refused"
        return "linked"

    client, middleware = make_client({"/login": login}, store=server_sql_store)
    if body(client.get("/login")) == "linked":
        assert len(middleware.user_sessions(user)) == 1


# -- 6. Options ------------------------------------------------------------------------


def test_ini_store_file_mode_can_be_written_as_the_readme_shows_it(tmp_path: Path) -> None:
    """README: ``store.file_mode`` (default ``0o600``); the ini value 0o640 is refused."""
    ini = tmp_path / "app.ini"
    ini.write_text(
        f"[session]\nsecret_key = {SECRET}\nstore = file:{tmp_path / 's'}\n"
        "store.file_mode = 0o640\n"
    )
    middleware = SessionMiddleware.from_ini(lambda e, s: [], ini)
    assert middleware.store.file_mode == 0o640  # type: ignore[attr-defined]


def test_ini_numeric_redis_password_is_text_when_quoted(tmp_path: Path) -> None:
    """``store.NAME`` values are guessed; double quotes keep one as text (README)."""
    ini = tmp_path / "app.ini"
    base = f"[session]\nsecret_key = {SECRET}\nstore = redis://127.0.0.1:6379/0\n"
    ini.write_text(base + 'store.password = "123456"\n')
    SessionMiddleware.from_ini(lambda e, s: [], ini)  # contacts nothing
    ini.write_text(base + "store.password = 123456\n")
    with pytest.raises(ConfigError, match="password"):
        SessionMiddleware.from_ini(lambda e, s: [], ini)


def test_host_prefix_is_matched_case_insensitively() -> None:
    """SPEC 4 cookie_name: browsers (RFC 6265bis) match ``__Host-`` case-insensitively,
    so ``__host-sid`` with a Domain is dropped by them; it should be a ConfigError."""
    with pytest.raises(ConfigError):
        SessionMiddleware(
            lambda e, s: [],
            secret_key=SECRET,
            store="memory://",
            cookie_name="__host-sid",
            cookie_domain="example.org",
        )


# -- 7. Error translation ----------------------------------------------------------------


def test_cli_user_id_from_undecodable_argv_exits_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SPEC 6: exit status 0/1/2 with one clear line on stderr.

    ``wsgisession sessions --user $'\\xff'`` arrives as a surrogate-escaped str; the
    SQL (and Redis) store raises a raw UnicodeEncodeError traceback.
    """
    ini = tmp_path / "app.ini"
    ini.write_text(f"[session]\nsecret_key = k\nstore = sqlite:///{tmp_path / 's.db'}\n")
    code = cli.main(["sessions", "--user", "\udcff", "--config", str(ini)])
    assert code in (0, 1, 2)


def test_user_sessions_with_a_user_id_the_store_cannot_encode_is_no_raw_driver_error(
    tmp_path: Path,
) -> None:
    """SPEC 3.5: never a bare driver exception; the SQL store lets UnicodeEncodeError out."""
    middleware = SessionMiddleware(
        lambda e, s: [],
        secret_key=SECRET,
        store=f"sqlite:///{tmp_path / 's.db'}",
        cleanup_interval=0,
    )
    try:
        found = middleware.user_sessions("\udcff")
    except UnicodeError as exc:
        pytest.fail(f"raw {type(exc).__name__} escaped: {exc}")
    except (StoreError, ValueError):
        return  # a StoreError, or a ValueError saying the user id is bad, is clear
    assert found == []

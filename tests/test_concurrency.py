"""Many requests on one session through a real threaded server, on every store.

A busy single-page app sends many requests on one session at once. Each save merges
onto what the store holds; once its compare-and-set has lost a few rounds, it takes
the session's save lock, so no request fails because others kept winning. And a
login (a regenerate) racing requests that still carry the old cookie must never end
with the browser's new cookie deleted.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.cookies import SimpleCookie
from typing import Any

import pytest
from waitress.server import create_server
from werkzeug.wrappers import Request

from tests.helpers import SECRET, body, cookie_value, make_client, routed_app
from wsgisession import Session, SessionMiddleware, StoreError
from wsgisession.ids import store_key
from wsgisession.stores import Record, Store
from wsgisession.stores.memory import MemoryStore


def incr(session: Session, request: Request) -> int:
    """Add one to the key named by ``?k=``, as a read-modify-write by the handler."""
    key = request.args["k"]
    session[key] = session.get(key, 0) + 1
    value: int = session[key]
    return value


def show(session: Session, request: Request) -> dict[str, Any]:
    return {"data": dict(session), "new": session.new, "expired": session.expired}


def login(session: Session, request: Request) -> str:
    session.regenerate()
    session.user_id = "ann"
    session["user"] = "ann"
    return "ok"


ROUTES = {"/incr": incr, "/show": show, "/login": login}


@contextmanager
def serving(
    store: Store, threads: int, **options: Any
) -> Iterator[tuple[SessionMiddleware, tuple[str, int]]]:
    """Serve the routes through waitress with *threads* threads.

    Yields the middleware and the server's address.
    """
    middleware = SessionMiddleware(
        routed_app(ROUTES), secret_key=SECRET, store=store, cleanup_interval=0, **options
    )
    # Our own socket map, so teardown can close every connection the server holds.
    sockets: dict[int, Any] = {}
    server = create_server(
        middleware,
        map=sockets,
        host="127.0.0.1",
        port=0,
        threads=threads,
        connection_limit=threads * 8,
        asyncore_loop_timeout=0.05,
    )
    stopping = threading.Event()

    def run() -> None:
        try:
            server.run()
        except OSError:
            # Sockets closed under the loop's poll while stopping: expected then.
            if not stopping.is_set():
                raise

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        yield middleware, ("127.0.0.1", int(server.effective_port))
    finally:
        stopping.set()
        server.task_dispatcher.shutdown()
        for channel in list(sockets.values()):
            channel.close()
        runner.join(5)


class Browser:
    """One HTTP client with a session cookie, on a keep-alive connection of its own."""

    def __init__(self, address: tuple[str, int], cookie: str | None = None) -> None:
        self.connection = http.client.HTTPConnection(*address, timeout=120)
        self.cookie = cookie

    def get(self, path: str) -> tuple[int, list[str], Any]:
        """GET *path*; return the status, the Set-Cookie headers and the JSON body."""
        headers = {} if self.cookie is None else {"Cookie": f"session_id={self.cookie}"}
        self.connection.request("GET", path, headers=headers)
        response = self.connection.getresponse()
        payload = response.read()
        set_cookies = response.headers.get_all("Set-Cookie") or []
        for header in set_cookies:
            morsel = SimpleCookie(header).get("session_id")
            if morsel is not None and morsel.value:
                self.cookie = morsel.value
        text = payload.decode()
        return response.status, set_cookies, json.loads(text) if response.status == 200 else text

    def close(self) -> None:
        self.connection.close()


def _run(count: int, target: Any) -> list[BaseException]:
    barrier = threading.Barrier(count)
    failures: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait()
            target(n)
        except BaseException as exc:  # handed to the test, which reports it
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def test_many_writers_on_one_session_lose_nothing(store: Store) -> None:
    """Every request answers 200 and every key ends at its count: no save gives up.

    16 writers of 30 requests each; ``benchmarks/contention.py`` runs this and 64 x 10,
    five times in a row, with timings.
    """
    writers, each = 16, 30
    with serving(store, threads=writers) as (middleware, address):
        first = Browser(address)
        assert first.get("/incr?k=start")[0] == 200
        statuses: list[int] = []

        def writer(n: int) -> None:
            browser = Browser(address, first.cookie)
            try:
                for _ in range(each):
                    status, _, answer = browser.get(f"/incr?k=t{n}")
                    statuses.append(status)
                    assert status == 200, answer
            finally:
                browser.close()

        failures = _run(writers, writer)
        assert not failures, failures[0]
        status, _, final = first.get("/show")
        metrics = middleware.metrics()
        first.close()
    assert statuses.count(200) == writers * each
    assert final["data"] == {"start": 1, **{f"t{n}": each for n in range(writers)}}
    assert metrics["store_errors"] == 0


def test_a_login_racing_old_cookies_never_deletes_the_new_one(store: Store) -> None:
    """Eight requests carrying the pre-login cookie run around a login (a regenerate).

    Whatever the order, none of their responses deletes the browser's cookie (which
    by then may be the new one), and none of them sees the logged-in session's data.
    """
    racers, each = 8, 10
    with serving(store, threads=racers + 1) as (_, address):
        browser = Browser(address)
        assert browser.get("/incr?k=n")[0] == 200
        old_cookie = browser.cookie
        answers: list[tuple[int, list[str], Any]] = []
        logged_in = threading.Event()

        def race(n: int) -> None:
            if n == racers:
                answers.append(browser.get("/login"))
                logged_in.set()
                return
            stale = Browser(address, old_cookie)
            try:
                for i in range(each):
                    path = f"/incr?k=r{n}" if i % 2 else "/show"
                    answers.append(stale.get(path))
                    # Keep sending the old cookie, as a browser does until it has the new.
                    stale.cookie = old_cookie
                    if logged_in.is_set() and i >= each // 2:
                        break
            finally:
                stale.close()

        failures = _run(racers + 1, race)
        assert not failures, failures[0]
        status, _, final = browser.get("/show")
        browser.close()
    assert status == 200 and final["data"]["user"] == "ann"
    assert browser.cookie != old_cookie
    for status, set_cookies, answer in answers:
        assert status == 200, answer
        for header in set_cookies:
            assert "Max-Age=0" not in header and not header.startswith("session_id=;"), (
                f"a response deleted the session cookie: {header}"
            )
        if isinstance(answer, dict) and "data" in answer:
            assert "user" not in answer["data"], "a request with the old id saw the login"


# -- the lock a save falls back on ------------------------------------------------------


@contextmanager
def lock_held(store: Store, key: str) -> Iterator[threading.Event]:
    """Hold *key*'s save lock in a thread until the yielded event is set."""
    holding, release = threading.Event(), threading.Event()

    def hold(current: Record) -> Record:
        holding.set()
        release.wait(60)
        return replace(current, version=current.version + 1)

    thread = threading.Thread(target=lambda: store.save_locked(key, hold, timeout=60))
    thread.start()
    assert holding.wait(60)
    try:
        yield release
    finally:
        release.set()
        thread.join(60)


def test_a_save_that_keeps_losing_waits_for_the_lock_and_is_counted() -> None:
    store = MemoryStore()
    client, middleware = make_client({"/incr": incr, "/show": show}, store=store)
    client.get("/incr?k=a")
    key = store_key(cookie_value(client).rsplit(".", 1)[0])
    with lock_held(store, key) as release:
        threading.Timer(0.2, release.set).start()
        response = client.get("/incr?k=b")
    assert response.status_code == 200
    assert body(client.get("/show"))["data"] == {"a": 1, "b": 1}
    metrics = middleware.metrics()
    assert metrics["locked_saves"] == 1
    assert metrics["conflicts"] == 1
    assert metrics["lock_wait_seconds"] > 0


def test_a_save_gives_up_only_when_save_timeout_runs_out() -> None:
    store = MemoryStore()
    client, middleware = make_client({"/incr": incr}, store=store, save_timeout=1)
    client.get("/incr?k=a")
    key = store_key(cookie_value(client).rsplit(".", 1)[0])
    with lock_held(store, key), pytest.raises(StoreError, match=r"save_timeout \(1 s\)"):
        client.get("/incr?k=b")
    assert middleware.metrics()["locked_saves"] == 1

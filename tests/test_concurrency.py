"""Requests on one session at once, on every store.

The behaviour is in docs/behaviour.rst, section "Concurrency": a save writes only what
its request changed, on top of what the store holds, so two requests that change
different keys both keep their changes and, on one key, the later save wins; a
session ended (logged out) during a request stays ended. A busy single-page app sends
many requests on one session at once: once a save's compare-and-set has lost a round,
it takes the session's save lock, so no request fails because others kept winning.

A login racing other requests is in ``test_regenerate.py``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from tests.helpers import (
    SECRET,
    HTTPBrowser,
    body,
    counter,
    deletes_the_cookie,
    dump,
    incr,
    key_of,
    live_sessions,
    logout,
    make_client,
    meanwhile,
    peek,
    put,
    routed_app,
    run_together,
    serving,
    set_cookies,
    twin,
)
from wsgisession import Session, SessionMiddleware, StoreError
from wsgisession.stores import Record, Store
from wsgisession.stores.memory import MemoryStore

THREADS = 16
WRITES_EACH = 5

ROUTES = {"/inc": counter, "/incr": incr, "/": dump, "/peek": peek, "/put": put, "/logout": logout}


def _interleaved(store: Store, other_path: str, **writes: str) -> tuple[Client, Client]:
    """A client whose ``/slow`` request loads its session, waits while another tab of
    the same session requests *other_path*, then sets *writes*; return the client and
    the other tab."""
    tabs: dict[str, Client] = {}
    slow = meanwhile(lambda: tabs["other"].get(other_path), **writes)
    client, _ = make_client({**ROUTES, "/slow": slow}, store=store)
    client.get("/inc")
    tabs["other"] = twin(client)
    return client, tabs["other"]


def _middleware(store: Store) -> SessionMiddleware:
    return SessionMiddleware(
        routed_app(ROUTES), secret_key=SECRET, store=store, cleanup_interval=0
    )


# -- two requests interleaved ---------------------------------------------------------------


def test_two_interleaved_requests_on_different_keys_both_keep_their_changes(
    store: Store,
) -> None:
    client, _ = _interleaved(store, "/put?key=fast&value=1", slow="1")
    assert client.get("/slow").status_code == 200
    assert body(client.get("/")) == {"n": 1, "fast": "1", "slow": "1"}


def test_two_interleaved_requests_on_the_same_key_the_later_save_wins(store: Store) -> None:
    client, _ = _interleaved(store, "/put?key=k&value=fast", k="slow")
    client.get("/slow")
    assert body(client.get("/")) == {"n": 1, "k": "slow"}


def test_a_concurrent_logout_is_never_undone(store: Store) -> None:
    """The slow request's write is dropped, and its response deletes the cookie."""
    client, _ = _interleaved(store, "/logout", late="write")
    before = key_of(client)
    [header] = set_cookies(client.get("/slow"))
    assert deletes_the_cookie(header)
    assert store.load(before) is None
    assert live_sessions(store) == 0


def test_a_remembered_session_ended_meanwhile_gets_its_cookie_expired() -> None:
    """A remembered session would re-issue its cookie on save; ended, it must expire it.

    (The same race with a regenerate in the slow request is in ``test_regenerate.py``.)
    """
    store = MemoryStore()
    tabs: dict[str, Client] = {}

    def remember(session: Session, request: Request) -> str:
        session.remember = True
        session["n"] = 1
        return "ok"

    slow = meanwhile(lambda: tabs["other"].get("/logout"), late="write")
    client, _ = make_client({**ROUTES, "/remember": remember, "/slow": slow}, store=store)
    client.get("/remember")
    tabs["other"] = twin(client)
    [header] = set_cookies(client.get("/slow"))
    assert deletes_the_cookie(header)
    assert live_sessions(store) == 0


# -- many requests at once ----------------------------------------------------------------------


def test_sixteen_threads_writing_distinct_keys_lose_nothing(store: Store) -> None:
    """Every request merges its own key; no write may be lost however they interleave."""
    client, middleware = make_client(ROUTES, store=store)
    client.get("/inc")

    def worker(n: int) -> None:
        own = twin(client)
        for i in range(WRITES_EACH):
            response = own.get(f"/put?key=t{n}-{i}&value={i}")
            assert response.status_code == 200

    failures = run_together(THREADS, worker)
    assert not failures, failures[0]
    expected = {f"t{n}-{i}": str(i) for n in range(THREADS) for i in range(WRITES_EACH)}
    assert body(client.get("/")) == {"n": 1, **expected}


def test_many_writers_on_one_session_lose_nothing(store: Store) -> None:
    """Every request answers 200 and every key ends at its count: no save gives up.

    16 writers of 30 requests each; ``benchmarks/contention.py`` runs this and 64 x 10,
    five times in a row, with timings.
    """
    writers, each = 16, 30
    middleware = _middleware(store)
    with serving(middleware, threads=writers) as address:
        first = HTTPBrowser(address)
        assert first.get("/incr?k=start")[0] == 200
        statuses: list[int] = []

        def writer(n: int) -> None:
            browser = HTTPBrowser(address, first.cookie)
            try:
                for _ in range(each):
                    status, _, answer = browser.get(f"/incr?k=t{n}")
                    statuses.append(status)
                    assert status == 200, answer
            finally:
                browser.close()

        failures = run_together(writers, writer)
        assert not failures, failures[0]
        status, _, final = first.get("/peek")
        metrics = middleware.metrics()
        first.close()
    assert statuses.count(200) == writers * each
    assert final["data"] == {"start": 1, **{f"t{n}": each for n in range(writers)}}
    assert metrics["store_errors"] == 0


# -- the lock a save falls back on ------------------------------------------------------


@contextlib.contextmanager
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
    # The lock's holder bumps the version as a concurrent writer would, without
    # sealing the record again, which only the middleware can do.
    client, middleware = make_client({"/incr": incr, "/peek": peek}, store=store, encrypt=False)
    client.get("/incr?k=a")
    key = key_of(client)
    with lock_held(store, key) as release:
        threading.Timer(0.2, release.set).start()
        response = client.get("/incr?k=b")
    assert response.status_code == 200
    assert body(client.get("/peek"))["data"] == {"a": 1, "b": 1}
    metrics = middleware.metrics()
    assert metrics["locked_saves"] == 1
    assert metrics["conflicts"] == 1
    assert metrics["lock_wait_seconds"] > 0


def test_a_save_gives_up_only_when_save_timeout_runs_out() -> None:
    store = MemoryStore()
    client, middleware = make_client({"/incr": incr}, store=store, save_timeout=1)
    client.get("/incr?k=a")
    key = key_of(client)
    with lock_held(store, key), pytest.raises(StoreError, match=r"save_timeout \(1 s\)"):
        client.get("/incr?k=b")
    assert middleware.metrics()["locked_saves"] == 1

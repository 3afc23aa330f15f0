"""The purge of expired records: in batches, from a background thread, one worker at a time.

Records are written already expired, so no test waits for an expiry. Threads are
waited on by polling with a deadline, and every purger is stopped in teardown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from werkzeug.test import Client

from tests.helpers import record_files, wait_until
from wsgisession import SessionMiddleware, StoreError
from wsgisession import purge as purge_module
from wsgisession.purge import BATCH, Purger, purge_expired
from wsgisession.stores import Store
from wsgisession.stores.file import FileStore
from wsgisession.stores.memory import MemoryStore
from wsgisession.testing import make_record, new_key

if TYPE_CHECKING:
    from collections.abc import Iterable
    from wsgiref.types import StartResponse, WSGIEnvironment

KEY = "a-long-random-test-secret-for-the-test-suite"
THREAD_NAME = "wsgisession-purge"

#: The ``purge_threads`` fixture: the purge threads started by the running test.
ThreadsStarted = Callable[[], set[threading.Thread]]


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _all_purge_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()}


@pytest.fixture(autouse=True)
def purge_threads() -> Iterator[ThreadsStarted]:
    """Return the purge threads this test started; fail it if it leaves one running.

    Threads that other test modules left behind are not this test's business.
    """
    before = _all_purge_threads()

    def started_here() -> set[threading.Thread]:
        return _all_purge_threads() - before

    yield started_here
    assert started_here() == set()


@pytest.fixture
def purgers() -> Iterator[list[Purger]]:
    """Purgers the test starts; each is stopped when the test ends, passed or not."""
    started: list[Purger] = []
    yield started
    for purger in started:
        purger.stop()


def _fill(store: Store, *, expired: int, live: int = 0) -> None:
    for _ in range(expired):
        assert store.save(new_key(), make_record(ttl=-5), expected_version=None)
    for _ in range(live):
        assert store.save(new_key(), make_record(ttl=3600), expected_version=None)


class _CountingMemoryStore(MemoryStore):
    """A real memory store that keeps a log of its cleanup calls."""

    def __init__(self) -> None:
        super().__init__()
        self.cleanups: list[tuple[int | None, int]] = []  # (limit, removed)

    @property
    def removed(self) -> int:
        return sum(removed for _, removed in self.cleanups)

    def cleanup(self, *, limit: int | None = None) -> int:
        removed = super().cleanup(limit=limit)
        self.cleanups.append((limit, removed))
        return removed


# -- purge_expired -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expired", "batch", "batches"),
    [
        pytest.param(5, 2, [2, 2, 1], id="last-batch-short"),
        pytest.param(4, 2, [2, 2, 0], id="last-batch-full"),
        pytest.param(0, 2, [0], id="nothing-expired"),
        pytest.param(3, 10, [3], id="one-batch"),
    ],
)
def test_purge_expired_deletes_in_batches_until_done(
    expired: int, batch: int, batches: list[int]
) -> None:
    store = _CountingMemoryStore()
    _fill(store, expired=expired, live=1)

    assert purge_expired(store, batch) == expired
    assert store.cleanups == [(batch, n) for n in batches]
    assert store.count() == 1


def test_purge_expired_stops_when_told_enough() -> None:
    store = _CountingMemoryStore()
    _fill(store, expired=5)
    asked: list[int] = []

    def enough() -> bool:
        asked.append(store.removed)
        return True

    assert purge_expired(store, 2, enough=enough) == 2
    assert store.cleanups == [(2, 2)] and asked == [2]
    assert purge_expired(store, 2) == 3


def test_purge_expired_uses_the_default_batch() -> None:
    store = _CountingMemoryStore()

    purge_expired(store)

    assert store.cleanups == [(BATCH, 0)]


def test_purge_expired_on_a_file_store(tmp_path: Path) -> None:
    with FileStore(tmp_path / "sessions") as store:
        _fill(store, expired=5, live=2)

        assert purge_expired(store, 2) == 5
        assert store.count() == 2
        assert store.cleanup() == 0


# -- Purger --------------------------------------------------------------------------------


def test_purger_removes_expired_records_of_a_file_store(
    tmp_path: Path, purgers: list[Purger]
) -> None:
    store = FileStore(tmp_path / "sessions")
    _fill(store, expired=4, live=1)
    purger = Purger(store, 0.05)
    purgers.append(purger)

    purger.start()

    wait_until(
        "the purge thread's progress",
        lambda: len(record_files(tmp_path / "sessions")) == 1,
        timeout=10,
    )
    assert store.count() == 1


def test_purger_keeps_purging_what_expires_later(purgers: list[Purger]) -> None:
    store = _CountingMemoryStore()
    purger = Purger(store, 0.05)
    purgers.append(purger)
    purger.start()

    _fill(store, expired=2)
    wait_until("the purge thread's progress", lambda: store.removed == 2, timeout=10)
    _fill(store, expired=3)
    wait_until("the purge thread's progress", lambda: store.removed == 5, timeout=10)


def test_a_purge_stops_before_its_turn_ends(
    purgers: list[Purger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim lasts one interval; a purge going on past it would run beside the next
    worker's. The rest of the expired records waits for the next turn."""
    monkeypatch.setattr(purge_module, "random", _NoJitter())
    monkeypatch.setattr(purge_module, "_TURN", 0.0)  # every turn is up at once
    store = _CountingMemoryStore()
    _fill(store, expired=2 * BATCH + 5, live=1)
    purger = Purger(store, 3600)
    purgers.append(purger)
    purger.start()
    wait_until("the first batch", lambda: bool(store.cleanups), timeout=10)
    purger.stop()
    assert store.cleanups == [(BATCH, BATCH)]
    assert store.removed == BATCH


def test_a_stopped_purger_stops_after_the_batch_under_way(
    purgers: list[Purger], monkeypatch: pytest.MonkeyPatch, purge_threads: ThreadsStarted
) -> None:
    monkeypatch.setattr(purge_module, "random", _NoJitter())
    holder: list[Purger] = []

    class StoppingStore(_CountingMemoryStore):
        def cleanup(self, *, limit: int | None = None) -> int:
            holder[0].stop()  # in the purge thread: it only tells the loop
            return super().cleanup(limit=limit)

    store = StoppingStore()
    _fill(store, expired=2 * BATCH + 5)
    holder.append(Purger(store, 3600))
    purgers.append(holder[0])
    holder[0].start()
    wait_until("the thread's end", lambda: not purge_threads(), timeout=10)
    assert store.cleanups == [(BATCH, BATCH)]


def test_purger_stop_ends_its_thread(purgers: list[Purger], purge_threads: ThreadsStarted) -> None:
    purger = Purger(MemoryStore(), 3600)
    purgers.append(purger)
    purger.start()
    assert purger.started and len(purge_threads()) == 1

    purger.stop()

    assert not purger.started and purge_threads() == set()


def test_purger_starts_one_thread_however_often_started(
    purgers: list[Purger], purge_threads: ThreadsStarted
) -> None:
    purger = Purger(MemoryStore(), 3600)
    purgers.append(purger)

    for _ in range(3):
        purger.start()

    assert len(purge_threads()) == 1


def test_purger_can_start_again_after_stop(purgers: list[Purger]) -> None:
    store = _CountingMemoryStore()
    purger = Purger(store, 0.05)
    purgers.append(purger)
    purger.start()
    purger.stop()

    _fill(store, expired=2)
    purger.start()

    wait_until("the purge thread's progress", lambda: store.removed == 2, timeout=10)


def test_purger_stop_before_start_is_harmless() -> None:
    Purger(MemoryStore(), 60).stop()


class _FailingOnceStore(_CountingMemoryStore):
    """A real memory store whose first cleanup raises *error*."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.failures = 0

    def cleanup(self, *, limit: int | None = None) -> int:
        if self.failures == 0:
            self.failures += 1
            raise self.error
        return super().cleanup(limit=limit)


def _outage() -> Exception:
    try:
        raise StoreError("memory store: the disk is on fire") from OSError(5, "I/O error")
    except StoreError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "level"),
    [
        pytest.param(_outage(), logging.WARNING, id="store-error"),
        pytest.param(RuntimeError("a bug in a third-party store"), logging.ERROR, id="a-bug"),
    ],
)
def test_an_error_in_the_thread_is_logged_and_the_thread_goes_on(
    error: Exception,
    level: int,
    purgers: list[Purger],
    caplog: pytest.LogCaptureFixture,
    purge_threads: ThreadsStarted,
) -> None:
    """An outage is a WARNING, anything else an ERROR with its traceback
    (docs/behaviour.rst, section "Events, metrics and logs")."""
    caplog.set_level(logging.WARNING, logger="wsgisession")
    store = _FailingOnceStore(error)
    _fill(store, expired=3, live=1)
    purger = Purger(store, 0.05)
    purgers.append(purger)

    purger.start()

    wait_until("the purge after the failed one", lambda: store.removed == 3, timeout=10)
    assert store.failures == 1
    assert purger.started and len(purge_threads()) == 1
    [logged] = [r for r in caplog.records if r.name == "wsgisession"]
    assert logged.levelno == level
    assert str(error) in logged.getMessage() + (logged.exc_text or "")


class _NoJitter:
    """Stands in for ``random`` in the purge module: always the low end of the range."""

    @staticmethod
    def uniform(low: float, high: float) -> float:
        return low


class _ClaimLog(FileStore):
    """A real file store that notes each purge claim it answers, and its cleanups."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.claims: list[bool] = []
        self.cleanups = 0

    def claim_purge(self, interval: float) -> bool:
        won = super().claim_purge(interval)
        self.claims.append(won)
        return won

    def cleanup(self, *, limit: int | None = None) -> int:
        removed = super().cleanup(limit=limit)
        self.cleanups += 1  # counted once done, so a test that sees it sees the purge
        return removed


def test_two_workers_on_one_directory_purge_once_per_interval(
    tmp_path: Path, purgers: list[Purger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes' stores on one directory: only the worker that claims purges."""
    # Without jitter, both purgers ask at once as soon as they start, and not again
    # for most of an hour.
    monkeypatch.setattr(purge_module, "random", _NoJitter())
    stores = [_ClaimLog(tmp_path / "sessions") for _ in range(2)]
    _fill(stores[0], expired=3, live=1)
    for store in stores:
        purgers.append(Purger(store, 3600))

    for purger in purgers:
        purger.start()

    def store_cleanups() -> int:
        return sum(store.cleanups for store in stores)

    wait_until(
        "the purge thread's progress",
        lambda: all(store.claims for store in stores) and store_cleanups() == 1,
        timeout=10,
    )
    assert sorted(store.claims[0] for store in stores) == [False, True]
    for store in stores:
        assert store.cleanups == (1 if store.claims == [True] else 0)
    assert stores[0].count() == 1
    assert FileStore(tmp_path / "sessions").cleanup() == 0


def test_file_store_claim_lasts_one_interval(tmp_path: Path) -> None:
    first, second = FileStore(tmp_path / "sessions"), FileStore(tmp_path / "sessions")

    assert first.claim_purge(3600) is True
    assert second.claim_purge(3600) is False
    assert first.claim_purge(3600) is False
    assert second.claim_purge(0) is True  # a zero interval has always passed


# -- the middleware's purger ----------------------------------------------------------------


@pytest.fixture
def close_later() -> Iterator[Callable[[SessionMiddleware], SessionMiddleware]]:
    """Close (and so stop the purger of) every middleware the test builds."""
    built: list[SessionMiddleware] = []

    def close_later(middleware: SessionMiddleware) -> SessionMiddleware:
        built.append(middleware)
        return middleware

    yield close_later
    for middleware in built:
        middleware.close()


def test_purger_starts_with_the_first_request_not_at_construction(
    close_later: Callable[[SessionMiddleware], SessionMiddleware],
    purge_threads: ThreadsStarted,
) -> None:
    store = _CountingMemoryStore()
    _fill(store, expired=2, live=1)
    middleware = close_later(
        SessionMiddleware(_app, secret_key=KEY, store=store, cleanup_interval=1)
    )
    purger = middleware._purger
    assert purger is not None

    assert not purger.started and purge_threads() == set()

    Client(middleware).get("/")

    assert purger.started and len(purge_threads()) == 1
    wait_until("the purge thread's progress", lambda: store.removed == 2, timeout=10)
    Client(middleware).get("/")
    assert len(purge_threads()) == 1


def test_middleware_close_stops_the_purger(
    close_later: Callable[[SessionMiddleware], SessionMiddleware],
    purge_threads: ThreadsStarted,
) -> None:
    middleware = close_later(
        SessionMiddleware(_app, secret_key=KEY, store="memory://", cleanup_interval=1)
    )
    Client(middleware).get("/")
    assert len(purge_threads()) == 1

    middleware.close()

    assert purge_threads() == set()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"store": "memory://", "cleanup_interval": 0}, id="interval-0"),
        pytest.param({"store": "redis://127.0.0.1:1/0"}, id="redis-native-expiry"),
    ],
)
def test_no_purger_when_disabled_or_the_store_expires_by_itself(
    options: dict[str, Any], close_later: Callable[[SessionMiddleware], SessionMiddleware]
) -> None:
    middleware = close_later(SessionMiddleware(_app, secret_key=KEY, **options))

    assert middleware._purger is None


class _NativeExpiryStore(MemoryStore):
    """A memory store that says its backend expires records by itself."""

    native_expiry = True


def test_no_purger_for_a_store_object_with_native_expiry(
    close_later: Callable[[SessionMiddleware], SessionMiddleware],
    purge_threads: ThreadsStarted,
) -> None:
    middleware = close_later(
        SessionMiddleware(_app, secret_key=KEY, store=_NativeExpiryStore(), cleanup_interval=1)
    )

    Client(middleware).get("/")

    assert middleware._purger is None and purge_threads() == set()

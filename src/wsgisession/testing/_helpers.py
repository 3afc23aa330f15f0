"""Helpers of the conformance suite: keys, records, and threads started together."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Final

from .. import _clock
from ..ids import new_session_id, store_key
from ..stores.base import Record, Store

__all__ = [
    "THREADS",
    "every_write_lands",
    "make_record",
    "make_tombstone",
    "move",
    "new_key",
    "run_threads",
]

#: How many threads the race tests start at once.
THREADS: Final = 16
#: How many writes each thread of :func:`every_write_lands` makes.
WRITES_EACH: Final = 5


def new_key() -> str:
    """Return a store key as the middleware makes them: the SHA-256 of a fresh id."""
    return store_key(new_session_id())


def make_record(
    data: bytes = b"{}",
    *,
    version: int = 1,
    ttl: float = 3600.0,
    user_id: str | None = None,
    meta: bytes = b"",
) -> Record:
    """Return a record that expires *ttl* seconds from now (in the past if negative).

    "Now" is the application's clock, which the middleware and every store read.
    """
    now = _clock.now()
    return Record(
        data=data,
        version=version,
        created_at=now,
        expires_at=now + ttl,
        last_seen=now,
        user_id=user_id,
        meta=meta,
    )


def make_tombstone(ttl: float = 60.0) -> Record:
    """Return a tombstone, as a regenerate leaves one: version 0, no user, no data."""
    now = _clock.now()
    return Record(data=b"", version=0, created_at=now, expires_at=now + ttl, last_seen=now)


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run *target(n)* in *count* threads released together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait()
            target(n)
        except BaseException as exc:  # reported to the test below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def move(store: Store, old: str, new: str, replaces_version: int | None) -> bool:
    """Save a record of user ``ann`` under *new* replacing *old*, as a regenerate does."""
    return store.save(
        new,
        make_record(b"moved", user_id="ann"),
        expected_version=None,
        replaces=old,
        replaces_version=replaces_version,
    )


def every_write_lands(store: Store, write: Callable[[str, int, int], None]) -> None:
    """Have :data:`THREADS` threads each write their own key, and check none is lost.

    *write(key, n, i)* must store ``{"t<n>": i}`` merged into the record under *key*;
    each thread calls it :data:`WRITES_EACH` times, with ``i`` counting up.
    """
    key = new_key()
    assert store.save(key, make_record(b"{}"), expected_version=None)

    def writer(n: int) -> None:
        for i in range(WRITES_EACH):
            write(key, n, i)

    run_threads(THREADS, writer)
    loaded = store.load(key)
    assert loaded is not None, "the record vanished"
    expected = {f"t{n}": WRITES_EACH - 1 for n in range(THREADS)}
    assert json.loads(loaded.data) == expected, "a concurrent write was lost"
    assert loaded.version == 1 + THREADS * WRITES_EACH, "a write did not bump the version"

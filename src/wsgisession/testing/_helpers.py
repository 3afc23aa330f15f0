"""Helpers of the conformance suite: keys, records, threads started together, and the
checks that many tests share, each failing with what the store did wrong."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest

from .. import _clock
from ..ids import new_session_id, store_key
from ..stores.base import Record, Store

__all__ = [
    "THREADS",
    "create",
    "every_write_lands",
    "fails_with",
    "loads",
    "make_record",
    "make_tombstone",
    "move",
    "new_key",
    "provided",
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


def create(store: Store, key: str, record: Record) -> None:
    """Save *record* as a new record under *key*, which must succeed."""
    assert store.save(key, record, expected_version=None), (
        f"save(expected_version=None) of a new record under a key holding no live record "
        f"returned False (version {record.version}, user {record.user_id!r})"
    )


def loads(store: Store, key: str, what: str) -> Record:
    """Load the record under *key*, which must be there; *what* names it in the failure."""
    loaded = store.load(key)
    assert loaded is not None, f"load() returned None for {what}"
    return loaded


@contextlib.contextmanager
def fails_with(kind: type[BaseException], message: str) -> Iterator[list[BaseException]]:
    """Fail with *message* unless the block raises *kind*; the list receives what it raised."""
    caught: list[BaseException] = []
    try:
        yield caught
    except kind as exc:
        caught.append(exc)
        return
    except Exception as exc:
        pytest.fail(f"{message}; it raised {type(exc).__name__}: {exc}")
    pytest.fail(message)


def provided(request: pytest.FixtureRequest, name: str, checks: str) -> Any:
    """Return the optional fixture *name*, or skip, saying which fixture to provide.

    *checks* completes "provide one to check that …" in the skip's reason.
    """
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError as exc:
        if exc.argname != name:
            raise  # the fixture exists, but needs one that doesn't: not a skip
        pytest.skip(f"no {name!r} fixture: provide one to check that {checks}")


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
    create(store, key, make_record(b"{}"))

    def writer(n: int) -> None:
        for i in range(WRITES_EACH):
            write(key, n, i)

    run_threads(THREADS, writer)
    loaded = loads(store, key, "the record that concurrent writers were writing")
    expected = {f"t{n}": WRITES_EACH - 1 for n in range(THREADS)}
    assert json.loads(loaded.data) == expected, (
        f"a concurrent write was lost: {THREADS} threads each wrote their own key, "
        f"the record holds {loaded.data[:200]!r}"
    )
    assert loaded.version == 1 + THREADS * WRITES_EACH, (
        f"after {THREADS * WRITES_EACH} successful writes on version 1 the record is version "
        f"{loaded.version}: a write did not replace the version it was given"
    )

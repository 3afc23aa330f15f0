"""The memcached store's races: a regenerate between its two writes, and the save lock.

Memcached can't change two keys in one step, so a regenerate writes the new record,
then overwrites the old one by compare-and-set. These tests put a concurrent write, a
logout or a failure exactly between the two steps and check that no write is lost,
no logout undone and no second live id left behind. The lock tests check that a
holder lets go only of its own lease, and that a save which read the session before
the lock was taken cannot land while it is held.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import PATIENCE, SERVER, in_thread
from tests.memcached_servers import MemcachedServer
from wsgisession.errors import StoreError
from wsgisession.stores import _memcached_lock
from wsgisession.stores._memcached_writes import Writes
from wsgisession.stores.base import LockTimeout, Record
from wsgisession.stores.memcached import MemcachedStore
from wsgisession.testing import make_record, make_tombstone, new_key

pytestmark = SERVER


@pytest.fixture
def mc(private_memcached: MemcachedServer) -> Iterator[MemcachedStore]:
    """A store on a memcached of this test alone."""
    with MemcachedStore.from_url(private_memcached.url) as store:
        yield store


def _between_the_steps(
    store: MemcachedStore, monkeypatch: pytest.MonkeyPatch, new: str, meanwhile: Callable[[], Any]
) -> None:
    """Run *meanwhile* once, right after a move has written *new* and before it
    overwrites the old key."""
    put = Writes.put

    def put_then_interfere(self: Writes, key: str, *args: Any) -> bool:
        written = put(self, key, *args)
        if key == new and written:
            monkeypatch.setattr(Writes, "put", put)
            meanwhile()
        return written

    monkeypatch.setattr(Writes, "put", put_then_interfere)


def _regenerate(store: MemcachedStore, old: str, new: str) -> bool:
    current = store.load(old)
    assert current is not None
    return store.save(
        new,
        make_record(current.data, user_id="ann"),
        expected_version=None,
        replaces=old,
        replaces_version=current.version,
        tombstone=make_tombstone(),
    )


def test_a_write_to_the_old_key_between_the_steps_undoes_the_move(
    mc: MemcachedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = new_key(), new_key()
    assert mc.save(old, make_record(b'{"n": 1}', user_id="ann"), expected_version=None)

    def concurrent_write() -> None:
        assert mc.save(old, make_record(b'{"n": 2}', version=2, user_id="ann"), expected_version=1)

    _between_the_steps(mc, monkeypatch, new, concurrent_write)
    assert not _regenerate(mc, old, new)
    assert mc.load(new) is None, "the new record of a failed move stayed"
    loaded = mc.load(old)
    assert loaded is not None and json.loads(loaded.data) == {"n": 2}, "the write was lost"
    assert [k for k, _ in mc.user_records("ann")] == [old]
    # The middleware's next attempt merges onto the new version and moves it.
    assert _regenerate(mc, old, new)
    moved = mc.load(new)
    assert moved is not None and json.loads(moved.data) == {"n": 2}


def test_a_logout_between_the_steps_is_never_undone(
    mc: MemcachedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = new_key(), new_key()
    assert mc.save(old, make_record(b"{}", user_id="ann"), expected_version=None)
    _between_the_steps(mc, monkeypatch, new, lambda: mc.delete(old))
    assert not _regenerate(mc, old, new)
    assert mc.load(new) is None, "a regenerate undid the logout"
    assert mc.load(old) is None
    assert mc.user_records("ann") == []


def test_a_server_lost_between_the_steps_leaves_no_second_live_id(
    memcached_pair: list[MemcachedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old key's server dies after the new record is written: the regenerate
    fails with a StoreError and takes the new record (on the other server) back."""
    hosts = ",".join(s.url.removeprefix("memcached://") for s in memcached_pair)
    with MemcachedStore.from_url(f"memcached://{hosts}", timeout=2, connect_timeout=1) as store:
        servers = store._servers
        old = new_key()
        home = servers.for_key(old)
        new = next(k for k in iter(new_key, None) if servers.for_key(k) is not home)
        assert store.save(old, make_record(b"{}", user_id="ann"), expected_version=None)
        port = home.server[1]
        [doomed] = [s for s in memcached_pair if s.port == port]
        _between_the_steps(store, monkeypatch, new, doomed.kill)
        with pytest.raises(StoreError):
            _regenerate(store, old, new)
        assert store.load(new) is None, "two live ids for one session"
        with pytest.raises(StoreError):
            store.load(old)


def test_a_save_that_read_before_the_lock_was_taken_cannot_land(mc: MemcachedStore) -> None:
    """The holder changes the session's cas token as it takes the lock."""
    key = new_key()
    assert mc.save(key, make_record(b'{"n": 0}'), expected_version=None)
    assert mc.load(key) is not None  # this thread's save will use the token read here
    holding, release = threading.Event(), threading.Event()

    def slow(current: Record) -> Record:
        holding.set()
        release.wait(PATIENCE)
        return make_record(b'{"holder": true}', version=current.version + 1)

    thread, outcome = in_thread(lambda: mc.save_locked(key, slow, timeout=PATIENCE))
    assert holding.wait(PATIENCE)
    try:
        assert not mc.save(key, make_record(b'{"late": true}', version=2), expected_version=1)
    finally:
        release.set()
        thread.join(PATIENCE)
    assert len(outcome) == 1 and isinstance(outcome[0], Record)
    loaded = mc.load(key)
    assert loaded is not None and loaded.data == b'{"holder": true}'


def test_a_lock_held_by_another_times_out_and_is_left_alone(mc: MemcachedStore) -> None:
    key = new_key()
    assert mc.save(key, make_record(b"{}"), expected_version=None)
    lock = mc._reader.lock_name(key)
    assert mc.client.add(lock, b"someone-else", expire=30, noreply=False)
    with pytest.raises(LockTimeout, match="stayed locked"):
        mc.save_locked(key, lambda c: make_record(version=c.version + 1), timeout=0.3)
    assert mc.client.get(lock) == b"someone-else", "a waiter let go of another's lock"
    assert not mc.save(key, make_record(version=2), expected_version=1)


def test_a_holder_whose_lease_ran_out_starts_over_and_frees_only_its_own(
    mc: MemcachedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled holder loses its lease to the next; both writes land, each merged on
    the other, and the first never lets go of the second's lock."""
    monkeypatch.setattr(_memcached_lock, "LEASE", 1)
    key = new_key()
    assert mc.save(key, make_record(b"{}"), expected_version=None)
    stalled, second_done = threading.Event(), threading.Event()
    builds: list[str] = []

    def slow(current: Record) -> Record:
        builds.append("first")
        if not stalled.is_set():
            stalled.set()
            second_done.wait(PATIENCE)  # past the lease: the second takes the lock
        data = {**json.loads(current.data), "first": True}
        return make_record(json.dumps(data).encode(), version=current.version + 1)

    def quick(current: Record) -> Record:
        builds.append("second")
        data = {**json.loads(current.data), "second": True}
        return make_record(json.dumps(data).encode(), version=current.version + 1)

    first, outcome = in_thread(lambda: mc.save_locked(key, slow, timeout=PATIENCE))
    assert stalled.wait(PATIENCE)
    assert mc.save_locked(key, quick, timeout=PATIENCE) is not None
    second_done.set()
    first.join(PATIENCE)
    assert len(outcome) == 1 and isinstance(outcome[0], Record), outcome
    loaded = mc.load(key)
    assert loaded is not None and json.loads(loaded.data) == {"first": True, "second": True}
    assert builds.count("first") == 2, "the stalled holder did not build again"
    assert mc.client.get(mc._reader.lock_name(key)) is None

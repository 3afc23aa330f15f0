"""Tests of the save that can't lose (``Store.save_locked``) and of tombstones."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest

from ..stores.base import LockTimeout, Record, Store
from ._helpers import every_write_lands, make_record, make_tombstone, new_key

__all__ = ["LockedSaveTests"]

# Generous bounds for waits between threads: a test that hits one has failed anyway,
# and a slow machine must not make a correct store fail.
_PATIENCE = 30.0


class _Refused(Exception):
    """What a test's build raises, to check that it comes back out unchanged."""


def _bumped(record: Record, **changes: object) -> Record:
    """Return the record a merge would write on top of *record*, with *changes* added."""
    data = json.loads(record.data)
    data.update(changes)
    return make_record(
        json.dumps(data).encode(), version=record.version + 1, user_id=record.user_id
    )


def _adding(**changes: object) -> Callable[[Record], Record]:
    """A build that adds *changes* to whatever record it is given."""
    return lambda current: _bumped(current, **changes)


def _in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Start *target* in a thread; the list receives what it returned or raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:  # handed to the test, which asserts on it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


class LockedSaveTests:
    """Tests of ``Store.save_locked`` and of the tombstones a regenerate leaves.

    Part of :class:`~wsgisession.testing.StoreConformance`.
    """

    # -- the locked save, alone ----------------------------------------------------

    def test_locked_save_writes_what_build_returns(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b'{"a": 1}', user_id="ann"), expected_version=None)
        seen: list[Record] = []

        def build(current: Record) -> Record:
            seen.append(current)
            return _bumped(current, b=2)

        written = store.save_locked(key, build, timeout=_PATIENCE)
        assert [record.data for record in seen] == [b'{"a": 1}'], "build saw another record"
        loaded = store.load(key)
        assert loaded is not None and written is not None
        assert json.loads(loaded.data) == {"a": 1, "b": 2}
        assert (loaded.version, written.version) == (2, 2)
        assert [k for k, _ in store.user_records("ann")] == [key]

    def test_locked_save_of_a_missing_record_never_builds(self, store: Store) -> None:
        def build(current: Record) -> Record:
            raise AssertionError("build called without a live record")

        key = new_key()
        assert store.save_locked(key, build, timeout=_PATIENCE) is None
        assert store.load(key) is None

    def test_locked_save_of_an_expired_record_never_builds(self, store: Store) -> None:
        def build(current: Record) -> Record:
            raise AssertionError("build called on an expired record")

        key = new_key()
        assert store.save(key, make_record(ttl=-5), expected_version=None)
        assert store.save_locked(key, build, timeout=_PATIENCE) is None
        assert store.load(key) is None

    def test_build_returning_none_writes_nothing(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b"v1"), expected_version=None)
        assert store.save_locked(key, lambda current: None, timeout=_PATIENCE) is None
        loaded = store.load(key)
        assert loaded is not None and (loaded.data, loaded.version) == (b"v1", 1)

    def test_what_build_raises_comes_out_unchanged_and_frees_the_lock(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)

        def build(current: Record) -> Record:
            raise _Refused("too big")

        with pytest.raises(_Refused):
            store.save_locked(key, build, timeout=_PATIENCE)
        loaded = store.load(key)
        assert loaded is not None and loaded.version == 1, "a failed build wrote something"
        assert store.save(key, make_record(b'{"x": 1}', version=2), expected_version=1), (
            "the lock was left held"
        )
        assert store.save_locked(key, lambda c: _bumped(c, y=2), timeout=_PATIENCE) is not None

    def test_locked_move_writes_the_new_key_and_removes_the_old(self, store: Store) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b'{"a": 1}', user_id="ann"), expected_version=None)

        def build(current: Record) -> Record:
            return make_record(current.data, version=1, user_id="ann")

        written = store.save_locked(old, build, timeout=_PATIENCE, moves_to=new)
        assert written is not None
        assert store.load(old) is None
        loaded = store.load(new)
        assert loaded is not None and json.loads(loaded.data) == {"a": 1}
        assert [k for k, _ in store.user_records("ann")] == [new]

    def test_locked_move_leaves_the_tombstone(self, store: Store) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"{}", user_id="ann"), expected_version=None)
        written = store.save_locked(
            old,
            lambda current: make_record(b"{}", user_id="ann"),
            timeout=_PATIENCE,
            moves_to=new,
            tombstone=make_tombstone(),
        )
        assert written is not None
        stone = store.load(old)
        assert stone is not None and stone.version == 0, "no tombstone under the old key"
        assert store.load(new) is not None
        assert [k for k, _ in store.user_records("ann")] == [new]

    # -- the locked save, against others -----------------------------------------------

    def test_a_plain_save_cannot_win_while_the_lock_is_held(self, store: Store) -> None:
        """A compare-and-set racing the holder waits for the lock, or fails; never wins."""
        key = new_key()
        assert store.save(key, make_record(b'{"n": 0}'), expected_version=None)
        racers: list[tuple[threading.Thread, list[object]]] = []

        def build(current: Record) -> Record:
            rival = _bumped(current, rival=True)
            racers.append(_in_thread(lambda: store.save(key, rival, expected_version=1)))
            thread, _ = racers[0]
            thread.join(0.5)  # a store that makes it wait leaves it waiting
            return _bumped(current, holder=True)

        assert store.save_locked(key, build, timeout=_PATIENCE) is not None
        thread, outcome = racers[0]
        thread.join(_PATIENCE)
        assert outcome == [False], f"the rival save returned {outcome!r}, not False"
        loaded = store.load(key)
        assert loaded is not None and json.loads(loaded.data) == {"n": 0, "holder": True}

    def test_a_second_locker_waits_and_a_short_wait_times_out(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b'{"n": 0}'), expected_version=None)
        holding, release = threading.Event(), threading.Event()

        def slow(current: Record) -> Record:
            holding.set()
            release.wait(_PATIENCE)
            return _bumped(current, first=True)

        holder, held = _in_thread(lambda: store.save_locked(key, slow, timeout=_PATIENCE))
        assert holding.wait(_PATIENCE), "the first locked save never built"
        try:
            with pytest.raises(LockTimeout):
                store.save_locked(key, lambda c: _bumped(c, second=True), timeout=0.3)
        finally:
            release.set()
            holder.join(_PATIENCE)
        assert len(held) == 1 and isinstance(held[0], Record), f"the holder got {held!r}"
        loaded = store.load(key)
        assert loaded is not None and json.loads(loaded.data) == {"n": 0, "first": True}

    def test_a_delete_racing_a_locked_save_is_never_undone(self, store: Store) -> None:
        """A logout during a locked save ends the session, whichever lands first."""
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        deleters: list[tuple[threading.Thread, list[object]]] = []

        def build(current: Record) -> Record:
            if not deleters:
                deleters.append(_in_thread(lambda: store.delete(key)))
                deleters[0][0].join(0.5)
            return _bumped(current, late=True)

        store.save_locked(key, build, timeout=_PATIENCE)
        thread, outcome = deleters[0]
        thread.join(_PATIENCE)
        assert outcome and not isinstance(outcome[0], BaseException), f"delete: {outcome!r}"
        assert store.load(key) is None, "a locked save undid a logout"

    def test_threads_taking_the_lock_lose_nothing(self, store: Store) -> None:
        def write(key: str, n: int, i: int) -> None:
            assert store.save_locked(key, _adding(**{f"t{n}": i}), timeout=60) is not None

        every_write_lands(store, write)

    def test_plain_and_locked_saves_mixed_lose_nothing(self, store: Store) -> None:
        """Writers that try compare-and-set twice, then lock."""

        def write(key: str, n: int, i: int) -> None:
            for _ in range(2):
                current = store.load(key)
                assert current is not None
                if store.save(
                    key, _bumped(current, **{f"t{n}": i}), expected_version=current.version
                ):
                    return
            assert store.save_locked(key, _adding(**{f"t{n}": i}), timeout=60) is not None

        every_write_lands(store, write)

    # -- tombstones ----------------------------------------------------------------

    def test_replaces_with_a_tombstone_leaves_it_under_the_old_key(self, store: Store) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"old", user_id="ann"), expected_version=None)
        assert store.save(
            new,
            make_record(b"new", user_id="ann"),
            expected_version=None,
            replaces=old,
            replaces_version=1,
            tombstone=make_tombstone(),
        )
        stone = store.load(old)
        assert stone is not None and (stone.version, stone.user_id) == (0, None)
        loaded = store.load(new)
        assert loaded is not None and loaded.data == b"new"
        assert [k for k, _ in store.user_records("ann")] == [new]

    def test_a_tombstone_is_no_session(self, store: Store) -> None:
        """It is not refreshed, counted, deleted as live, nor written over by a stale save."""
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"old"), expected_version=None)
        stone = make_tombstone()
        assert store.save(new, make_record(), expected_version=None, replaces=old, tombstone=stone)
        assert not store.save(old, make_record(b"stale", version=2), expected_version=1)
        assert not store.refresh(old, stone.expires_at + 3600, stone.last_seen + 1)
        loaded = store.load(old)
        assert loaded is not None and loaded.version == 0
        assert loaded.expires_at == pytest.approx(stone.expires_at, abs=1)
        counted = store.count()
        if counted is not None:  # None: a store that can't count, for good (see RecordTests)
            assert counted == 1, "the tombstone was counted as a live session"
        assert not store.delete(old), "deleting a tombstone reported a live session"
        assert store.load(old) is None

    def test_an_expired_tombstone_is_gone(self, store: Store) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"old"), expected_version=None)
        assert store.save(
            new,
            make_record(),
            expected_version=None,
            replaces=old,
            tombstone=make_tombstone(ttl=-1),
        )
        assert store.load(old) is None
        assert store.cleanup() == (0 if store.native_expiry else 1)
        assert store.load(old) is None

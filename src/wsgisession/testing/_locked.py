"""Tests of the save that can't lose (``Store.save_locked``) and of tombstones."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from ..stores.base import LockTimeout, Record, Store
from ._helpers import (
    create,
    every_write_lands,
    fails_with,
    loads,
    make_record,
    make_tombstone,
    new_key,
)

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
        create(store, key, make_record(b'{"a": 1}', user_id="ann"))
        seen: list[Record] = []

        def build(current: Record) -> Record:
            seen.append(current)
            return _bumped(current, b=2)

        written = store.save_locked(key, build, timeout=_PATIENCE)
        assert [record.data for record in seen] == [b'{"a": 1}'], (
            f"build was given {[r.data for r in seen]!r}, not once the live record"
        )
        assert written is not None, "save_locked() of a live record returned None"
        loaded = loads(store, key, "the record save_locked() wrote")
        assert json.loads(loaded.data) == {"a": 1, "b": 2}, (
            f"save_locked() stored {loaded.data!r}, not what build returned"
        )
        assert (loaded.version, written.version) == (2, 2), (
            f"save_locked() stored version {loaded.version} and returned version "
            f"{written.version}; build returned version 2"
        )
        listed = [k for k, _ in store.user_records("ann")]
        assert listed == [key], f"after save_locked() the user index lists {listed}"

    def test_locked_save_of_a_missing_record_never_builds(self, store: Store) -> None:
        def build(current: Record) -> Record:
            raise AssertionError("build called without a live record")

        key = new_key()
        result = store.save_locked(key, build, timeout=_PATIENCE)
        assert result is None, f"save_locked() of a key holding nothing returned {result!r}"
        assert store.load(key) is None, "save_locked() of a key holding nothing wrote a record"

    def test_locked_save_of_an_expired_record_never_builds(self, store: Store) -> None:
        def build(current: Record) -> Record:
            raise AssertionError("build called on an expired record")

        key = new_key()
        create(store, key, make_record(ttl=-5))
        result = store.save_locked(key, build, timeout=_PATIENCE)
        assert result is None, f"save_locked() of an expired record returned {result!r}"
        assert store.load(key) is None, "save_locked() of an expired record brought it back"

    def test_build_returning_none_writes_nothing(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(b"v1"))
        result = store.save_locked(key, lambda current: None, timeout=_PATIENCE)
        assert result is None, f"save_locked() whose build returned None returned {result!r}"
        loaded = loads(store, key, "the record, after a build that returned None")
        assert (loaded.data, loaded.version) == (b"v1", 1), (
            f"a build that returned None changed the record: {loaded.data!r}, "
            f"version {loaded.version}"
        )

    def test_what_build_raises_comes_out_unchanged_and_frees_the_lock(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(b"{}"))

        def build(current: Record) -> Record:
            raise _Refused("too big")

        with fails_with(_Refused, "what build raised did not come out of save_locked()"):
            store.save_locked(key, build, timeout=_PATIENCE)
        loaded = loads(store, key, "the record, after a build that raised")
        assert loaded.version == 1, "a build that raised left something written"
        assert store.save(key, make_record(b'{"x": 1}', version=2), expected_version=1), (
            "a plain save after a build that raised returned False: the lock was left held"
        )
        assert store.save_locked(key, lambda c: _bumped(c, y=2), timeout=_PATIENCE) is not None, (
            "save_locked() after a build that raised returned None"
        )

    def test_locked_move_writes_the_new_key_and_removes_the_old(self, store: Store) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(b'{"a": 1}', user_id="ann"))

        def build(current: Record) -> Record:
            return make_record(current.data, version=1, user_id="ann")

        written = store.save_locked(old, build, timeout=_PATIENCE, moves_to=new)
        assert written is not None, "save_locked(moves_to=new) of a live record returned None"
        assert store.load(old) is None, "save_locked(moves_to=new) left the old record in place"
        loaded = loads(store, new, "the record save_locked(moves_to=) wrote")
        assert json.loads(loaded.data) == {"a": 1}, f"the moved record holds {loaded.data!r}"
        listed = [k for k, _ in store.user_records("ann")]
        assert listed == [new], f"after a locked move the user index lists {listed}"

    def test_locked_move_writes_over_an_expired_record_at_the_new_key(self, store: Store) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(b'{"a": 1}'))
        store.save(new, make_record(b'{"stale": 1}', ttl=-5), expected_version=None)

        def build(current: Record) -> Record:
            return make_record(current.data, version=1)

        written = store.save_locked(old, build, timeout=_PATIENCE, moves_to=new)
        assert written is not None, (
            "save_locked(moves_to=) onto a key whose record expired returned None: a create "
            "writes over an expired record"
        )
        loaded = loads(store, new, "the record save_locked(moves_to=) wrote over an expired one")
        assert json.loads(loaded.data) == {"a": 1}, f"the moved record holds {loaded.data!r}"

    def test_locked_move_leaves_a_live_record_at_the_new_key_alone(self, store: Store) -> None:
        """A move is a create at the new key: another session living there is no
        record to write over, so nothing is written, and both stay as they were."""
        old, new = new_key(), new_key()
        create(store, old, make_record(b'{"a": 1}', user_id="ann"))
        create(store, new, make_record(b'{"b": 2}', user_id="bob"))

        def build(current: Record) -> Record:
            return make_record(current.data, version=1, user_id="ann")

        written = store.save_locked(old, build, timeout=_PATIENCE, moves_to=new)
        assert written is None, (
            "save_locked(moves_to=) onto a key holding a live record returned a record: "
            "it wrote over another session"
        )
        there = loads(store, new, "the live record at the key a locked move was refused")
        assert json.loads(there.data) == {"b": 2}, f"the other session now holds {there.data!r}"
        assert there.user_id == "bob", f"the other session now belongs to {there.user_id!r}"
        kept = loads(store, old, "the record a refused locked move left")
        assert json.loads(kept.data) == {"a": 1}, f"the record left now holds {kept.data!r}"
        for user, key in (("ann", old), ("bob", new)):
            listed = [k for k, _ in store.user_records(user)]
            assert listed == [key], f"after a refused locked move {user}'s index lists {listed}"

    def test_locked_move_leaves_the_tombstone(self, store: Store) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(b"{}", user_id="ann"))
        written = store.save_locked(
            old,
            lambda current: make_record(b"{}", user_id="ann"),
            timeout=_PATIENCE,
            moves_to=new,
            tombstone=make_tombstone(),
        )
        assert written is not None, "save_locked(moves_to=, tombstone=) returned None"
        stone = loads(store, old, "the tombstone a locked move leaves under the old key")
        assert stone.version == 0, f"the old key holds version {stone.version}, not a tombstone"
        loads(store, new, "the record a locked move wrote")
        listed = [k for k, _ in store.user_records("ann")]
        assert listed == [new], f"after a locked move the user index lists {listed}"

    # -- the locked save, against others -----------------------------------------------

    def test_a_plain_save_cannot_win_while_the_lock_is_held(self, store: Store) -> None:
        """A compare-and-set racing the holder waits for the lock, or fails; never wins."""
        key = new_key()
        create(store, key, make_record(b'{"n": 0}'))
        racers: list[tuple[threading.Thread, list[object]]] = []

        def build(current: Record) -> Record:
            rival = _bumped(current, rival=True)
            racers.append(_in_thread(lambda: store.save(key, rival, expected_version=1)))
            thread, _ = racers[0]
            thread.join(0.5)  # a store that makes it wait leaves it waiting
            return _bumped(current, holder=True)

        written = store.save_locked(key, build, timeout=_PATIENCE)
        assert written is not None, "save_locked() of a live record returned None"
        thread, outcome = racers[0]
        thread.join(_PATIENCE)
        assert outcome == [False], (
            f"a plain save racing a locked one returned {outcome!r}, not False: it must wait "
            "for the save lock, or fail"
        )
        loaded = loads(store, key, "the record the locked save wrote")
        assert json.loads(loaded.data) == {"n": 0, "holder": True}, (
            f"the record holds {loaded.data!r}, not what the lock holder wrote"
        )

    def test_a_second_locker_waits_and_a_short_wait_times_out(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(b'{"n": 0}'))
        holding, release = threading.Event(), threading.Event()

        def slow(current: Record) -> Record:
            holding.set()
            release.wait(_PATIENCE)
            return _bumped(current, first=True)

        holder, held = _in_thread(lambda: store.save_locked(key, slow, timeout=_PATIENCE))
        assert holding.wait(_PATIENCE), "the first locked save never built"
        try:
            with fails_with(
                LockTimeout,
                "save_locked(timeout=0.3) while another held the lock did not raise LockTimeout",
            ):
                store.save_locked(key, lambda c: _bumped(c, second=True), timeout=0.3)
        finally:
            release.set()
            holder.join(_PATIENCE)
        assert len(held) == 1 and isinstance(held[0], Record), (
            f"the first locked save, made to wait, returned {held!r} instead of its record"
        )
        loaded = loads(store, key, "the record the first locked save wrote")
        assert json.loads(loaded.data) == {"n": 0, "first": True}, (
            f"the record holds {loaded.data!r}: the save that timed out wrote something"
        )

    def test_a_delete_racing_a_locked_save_is_never_undone(self, store: Store) -> None:
        """A logout during a locked save ends the session, whichever lands first."""
        key = new_key()
        create(store, key, make_record(b"{}"))
        deleters: list[tuple[threading.Thread, list[object]]] = []

        def build(current: Record) -> Record:
            if not deleters:
                deleters.append(_in_thread(lambda: store.delete(key)))
                deleters[0][0].join(0.5)
            return _bumped(current, late=True)

        store.save_locked(key, build, timeout=_PATIENCE)
        thread, outcome = deleters[0]
        thread.join(_PATIENCE)
        assert outcome and not isinstance(outcome[0], BaseException), (
            f"a delete racing a locked save ended with {outcome!r}"
        )
        assert store.load(key) is None, "a locked save undid a logout"

    def test_threads_taking_the_lock_lose_nothing(self, store: Store) -> None:
        def write(key: str, n: int, i: int) -> None:
            assert store.save_locked(key, _adding(**{f"t{n}": i}), timeout=60) is not None, (
                "save_locked() of a live record returned None"
            )

        every_write_lands(store, write)

    def test_plain_and_locked_saves_mixed_lose_nothing(self, store: Store) -> None:
        """Writers that try compare-and-set twice, then lock."""

        def write(key: str, n: int, i: int) -> None:
            for _ in range(2):
                current = loads(store, key, "the record that concurrent writers share")
                if store.save(
                    key, _bumped(current, **{f"t{n}": i}), expected_version=current.version
                ):
                    return
            assert store.save_locked(key, _adding(**{f"t{n}": i}), timeout=60) is not None, (
                "save_locked() of a live record returned None"
            )

        every_write_lands(store, write)

    # -- tombstones ----------------------------------------------------------------

    def test_replaces_with_a_tombstone_leaves_it_under_the_old_key(self, store: Store) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(b"old", user_id="ann"))
        assert store.save(
            new,
            make_record(b"new", user_id="ann"),
            expected_version=None,
            replaces=old,
            replaces_version=1,
            tombstone=make_tombstone(),
        ), "save(replaces=, replaces_version=, tombstone=) with the right version returned False"
        stone = loads(store, old, "the tombstone a move leaves under the old key")
        assert (stone.version, stone.user_id) == (0, None), (
            f"the old key holds version {stone.version} of user {stone.user_id!r}, "
            "not the tombstone (version 0, no user)"
        )
        loaded = loads(store, new, "the record a move with a tombstone wrote")
        assert loaded.data == b"new", f"the moved record holds {loaded.data!r}"
        listed = [k for k, _ in store.user_records("ann")]
        assert listed == [new], f"after a move with a tombstone the user index lists {listed}"

    def test_a_tombstone_is_no_session(self, store: Store) -> None:
        """It is not refreshed, counted, deleted as live, nor written over by a stale save."""
        old, new = new_key(), new_key()
        create(store, old, make_record(b"old"))
        stone = make_tombstone()
        assert store.save(
            new, make_record(), expected_version=None, replaces=old, tombstone=stone
        ), "save(replaces=, tombstone=) of a new record returned False"
        assert not store.save(old, make_record(b"stale", version=2), expected_version=1), (
            "a save expecting version 1 over a tombstone returned True"
        )
        assert not store.refresh(old, stone.expires_at + 3600, stone.last_seen + 1), (
            "refresh() of a tombstone returned True"
        )
        loaded = loads(store, old, "a tombstone after a stale save and a refresh")
        assert loaded.version == 0, (
            f"a stale save replaced the tombstone by version {loaded.version}"
        )
        assert abs(loaded.expires_at - stone.expires_at) <= 1, (
            f"refresh() moved a tombstone's expiry from {stone.expires_at} to {loaded.expires_at}"
        )
        counted = store.count()
        if counted is not None:  # None: a store that can't count, for good (see RecordTests)
            assert counted == 1, f"count() is {counted} with one session and one tombstone, not 1"
        assert not store.delete(old), "delete() of a tombstone returned True"
        assert store.load(old) is None, "delete() of a tombstone left it in place"

    def test_an_expired_tombstone_is_gone(self, store: Store) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(b"old"))
        assert store.save(
            new,
            make_record(),
            expected_version=None,
            replaces=old,
            tombstone=make_tombstone(ttl=-1),
        ), "save(replaces=, tombstone=) of a new record returned False"
        assert store.load(old) is None, "load() returned an expired tombstone"
        removed, expected = store.cleanup(), 0 if store.native_expiry else 1
        assert removed == expected, (
            f"cleanup() with one expired tombstone returned {removed}, not {expected}"
        )
        assert store.load(old) is None, "load() returned an expired tombstone after cleanup()"

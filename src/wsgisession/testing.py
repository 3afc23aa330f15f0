"""The conformance suite every store must pass, for built-in and third-party stores.

Subclass :class:`StoreConformance` in a test module and give it a ``store`` fixture
that yields a fresh, empty store::

    import pytest
    from wsgisession.testing import StoreConformance

    @pytest.fixture
    def store():
        with MyStore.from_url("mine://localhost/test") as s:
            yield s

    class TestMyStore(StoreConformance):
        pass

The class name has no ``Test`` prefix, so pytest collects it only through a subclass.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from .ids import new_session_id, store_key
from .stores.base import Record, Store

__all__ = ["StoreConformance", "make_record", "new_key"]

_THREADS = 16


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
    """Return a record that expires *ttl* seconds from now (in the past if negative)."""
    now = time.time()
    return Record(
        data=data,
        version=version,
        created_at=now,
        expires_at=now + ttl,
        last_seen=now,
        user_id=user_id,
        meta=meta,
    )


def _run_threads(count: int, target: Callable[[int], None]) -> None:
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


class StoreConformance:
    """Tests every :class:`~wsgisession.stores.Store` must pass.

    Needs one fixture, ``store``: a fresh, empty store, closed after the test.
    Records are made already expired rather than waited for, so the suite runs the
    same on every backend and never sleeps out a timeout.
    """

    # -- load and create ------------------------------------------------------

    def test_missing_key_loads_none(self, store: Store) -> None:
        assert store.load(new_key()) is None

    def test_created_record_round_trips(self, store: Store) -> None:
        key = new_key()
        record = make_record(b'{"a": 1}', user_id="user-\u00e9", meta=b'{"r": true}')
        assert store.save(key, record, expected_version=None)
        loaded = store.load(key)
        assert loaded is not None
        assert loaded.data == record.data
        assert loaded.version == 1
        assert loaded.user_id == "user-\u00e9"
        assert loaded.meta == record.meta
        assert abs(loaded.created_at - record.created_at) < 0.01
        assert abs(loaded.expires_at - record.expires_at) < 0.01
        assert abs(loaded.last_seen - record.last_seen) < 0.01

    def test_record_without_user_round_trips(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b"x"), expected_version=None)
        loaded = store.load(key)
        assert loaded is not None
        assert loaded.user_id is None
        assert loaded.meta == b""

    def test_create_fails_when_a_live_record_exists(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b"first"), expected_version=None)
        assert not store.save(key, make_record(b"second"), expected_version=None)
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"first"

    def test_create_overwrites_an_expired_record(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b"old", ttl=-10), expected_version=None)
        assert store.save(key, make_record(b"new"), expected_version=None)
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"new"

    def test_arbitrary_bytes_round_trip(self, store: Store) -> None:
        key = new_key()
        data = bytes(range(256)) * 4
        assert store.save(
            key, make_record(data, meta=bytes(range(255, -1, -1))), expected_version=None
        )
        loaded = store.load(key)
        assert loaded is not None
        assert loaded.data == data
        assert loaded.meta == bytes(range(255, -1, -1))

    def test_one_megabyte_of_binary_data_round_trips(self, store: Store) -> None:
        key = new_key()
        data = bytes(range(256)) * 4096
        assert len(data) == 1 << 20
        assert store.save(key, make_record(data), expected_version=None)
        loaded = store.load(key)
        assert loaded is not None and loaded.data == data

    # -- compare-and-set -------------------------------------------------------

    def test_save_with_current_version_replaces_the_record(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b"v1"), expected_version=None)
        assert store.save(key, make_record(b"v2", version=2, user_id="u"), expected_version=1)
        loaded = store.load(key)
        assert loaded is not None
        assert (loaded.data, loaded.version, loaded.user_id) == (b"v2", 2, "u")

    def test_stale_version_writes_nothing(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b"v1"), expected_version=None)
        assert store.save(key, make_record(b"v2", version=2), expected_version=1)
        assert not store.save(key, make_record(b"stale", version=2), expected_version=1)
        loaded = store.load(key)
        assert loaded is not None and (loaded.data, loaded.version) == (b"v2", 2)

    def test_save_with_a_version_on_a_missing_key_writes_nothing(self, store: Store) -> None:
        key = new_key()
        assert not store.save(key, make_record(b"v2", version=2), expected_version=1)
        assert store.load(key) is None

    def test_save_after_delete_does_not_resurrect(self, store: Store) -> None:
        """A request that loaded a session a logout then deleted must not bring it back."""
        key = new_key()
        assert store.save(key, make_record(b"v1"), expected_version=None)
        assert store.delete(key)
        assert not store.save(key, make_record(b"v2", version=2), expected_version=1)
        assert store.load(key) is None

    def test_save_on_an_expired_record_writes_nothing(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b"v1", ttl=-10), expected_version=None)
        assert not store.save(key, make_record(b"v2", version=2), expected_version=1)
        assert store.load(key) is None

    def test_replaces_deletes_the_old_record(self, store: Store) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"data", user_id="u"), expected_version=None)
        assert store.save(
            new, make_record(b"data", user_id="u"), expected_version=None, replaces=old
        )
        assert store.load(old) is None
        loaded = store.load(new)
        assert loaded is not None and loaded.data == b"data"

    def test_failed_save_with_replaces_keeps_the_old_record(self, store: Store) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"old"), expected_version=None)
        assert store.save(new, make_record(b"taken"), expected_version=None)
        assert not store.save(new, make_record(b"mine"), expected_version=None, replaces=old)
        loaded_old, loaded_new = store.load(old), store.load(new)
        assert loaded_old is not None and loaded_old.data == b"old"
        assert loaded_new is not None and loaded_new.data == b"taken"

    def test_replaces_with_the_current_version_moves_the_record(self, store: Store) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"v1", user_id="ann"), expected_version=None)
        assert store.save(old, make_record(b"v2", version=2, user_id="ann"), expected_version=1)
        assert store.save(
            new,
            make_record(b"moved", user_id="ann"),
            expected_version=None,
            replaces=old,
            replaces_version=2,
        )
        assert store.load(old) is None
        loaded = store.load(new)
        assert loaded is not None and (loaded.data, loaded.version) == (b"moved", 1)
        assert [key for key, _ in store.user_records("ann")] == [new]

    def test_replaces_with_a_stale_version_writes_and_deletes_nothing(self, store: Store) -> None:
        """A regenerate that merged onto an old version must not drop the newer write."""
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"v1", user_id="ann"), expected_version=None)
        assert store.save(old, make_record(b"v2", version=2, user_id="ann"), expected_version=1)
        assert not store.save(
            new,
            make_record(b"moved", user_id="ann"),
            expected_version=None,
            replaces=old,
            replaces_version=1,
        )
        assert store.load(new) is None
        loaded = store.load(old)
        assert loaded is not None and (loaded.data, loaded.version) == (b"v2", 2)
        assert [key for key, _ in store.user_records("ann")] == [old]

    def test_replaces_version_of_a_deleted_record_creates_nothing(self, store: Store) -> None:
        """A regenerate must not undo a logout that deleted the old record."""
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"v1", user_id="ann"), expected_version=None)
        assert store.delete(old)
        assert not store.save(
            new,
            make_record(b"moved", user_id="ann"),
            expected_version=None,
            replaces=old,
            replaces_version=1,
        )
        assert store.load(new) is None
        assert store.load(old) is None
        assert store.user_records("ann") == []

    def test_replaces_version_of_an_expired_record_creates_nothing(self, store: Store) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"v1", user_id="ann", ttl=-10), expected_version=None)
        assert not store.save(
            new,
            make_record(b"moved", user_id="ann"),
            expected_version=None,
            replaces=old,
            replaces_version=1,
        )
        assert store.load(new) is None
        assert store.user_records("ann") == []

    def test_failed_write_with_the_right_replaces_version_keeps_the_old_record(
        self, store: Store
    ) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"old", user_id="ann"), expected_version=None)
        assert store.save(new, make_record(b"taken"), expected_version=None)
        assert not store.save(
            new,
            make_record(b"mine", user_id="ann"),
            expected_version=None,
            replaces=old,
            replaces_version=1,
        )
        assert not store.save(
            new,
            make_record(b"mine", version=3, user_id="ann"),
            expected_version=2,
            replaces=old,
            replaces_version=1,
        )
        loaded_old, loaded_new = store.load(old), store.load(new)
        assert loaded_old is not None and loaded_old.data == b"old"
        assert loaded_new is not None and loaded_new.data == b"taken"
        assert [key for key, _ in store.user_records("ann")] == [old]

    def test_replaces_version_applies_to_a_compare_and_set_too(self, store: Store) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"old", version=4), expected_version=None)
        assert store.save(new, make_record(b"v1"), expected_version=None)
        assert not store.save(
            new,
            make_record(b"v2", version=2),
            expected_version=1,
            replaces=old,
            replaces_version=3,
        )
        assert store.save(
            new,
            make_record(b"v2", version=2),
            expected_version=1,
            replaces=old,
            replaces_version=4,
        )
        assert store.load(old) is None
        loaded = store.load(new)
        assert loaded is not None and (loaded.data, loaded.version) == (b"v2", 2)

    def test_regenerate_racing_writes_to_the_old_key_loses_none(self, store: Store) -> None:
        """One thread moves a record to a new key while the others write the old one.

        Each attempt of the move merges onto the version it read and names it as
        ``replaces_version``: either it fails, leaving the new key absent and the old
        record with the others' writes, or it wins, and every write that landed on the
        old key before it is in the moved record while every later one fails.
        """
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"{}", user_id="ann"), expected_version=None)
        writes_each = 5
        landed: dict[int, int] = {}
        moved: list[dict[str, object]] = []

        def regenerate() -> None:
            while True:
                current = store.load(old)
                assert current is not None, "only the move deletes the old record"
                data = json.loads(current.data)
                data["moved"] = True
                record = make_record(json.dumps(data).encode(), user_id="ann")
                time.sleep(0.001)  # a window for the writers, as a request's handler has
                if store.save(
                    new,
                    record,
                    expected_version=None,
                    replaces=old,
                    replaces_version=current.version,
                ):
                    moved.append(data)
                    return
                assert store.load(new) is None, "a failed move wrote the new key"

        def writer(n: int) -> None:
            for i in range(writes_each):
                while True:
                    current = store.load(old)
                    if current is None:
                        return  # moved: this and later writes go nowhere
                    data = json.loads(current.data)
                    data[f"t{n}"] = i
                    record = make_record(
                        json.dumps(data).encode(), version=current.version + 1, user_id="ann"
                    )
                    if store.save(old, record, expected_version=current.version):
                        landed[n] = i
                        break

        _run_threads(_THREADS, lambda n: regenerate() if n == 0 else writer(n))
        [data] = moved
        assert store.load(old) is None
        loaded = store.load(new)
        assert loaded is not None and json.loads(loaded.data) == data
        expected = {"moved": True, **{f"t{n}": i for n, i in landed.items()}}
        assert data == expected, "a write to the old key was lost, or one that failed kept"
        assert [key for key, _ in store.user_records("ann")] == [new]

    def test_one_winner_when_threads_race_on_a_version(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b"v1"), expected_version=None)
        wins: list[int] = []

        def race(n: int) -> None:
            if store.save(key, make_record(str(n).encode(), version=2), expected_version=1):
                wins.append(n)

        _run_threads(_THREADS, race)
        assert len(wins) == 1
        loaded = store.load(key)
        assert loaded is not None and loaded.data == str(wins[0]).encode()

    def test_one_winner_when_threads_race_to_create(self, store: Store) -> None:
        key = new_key()
        wins: list[int] = []

        def race(n: int) -> None:
            if store.save(key, make_record(str(n).encode()), expected_version=None):
                wins.append(n)

        _run_threads(_THREADS, race)
        assert len(wins) == 1

    def test_concurrent_disjoint_writes_all_survive(self, store: Store) -> None:
        """Threads merging their own key by compare-and-set lose nobody's write."""
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        writes_each = 5

        def writer(n: int) -> None:
            for i in range(writes_each):
                while True:
                    current = store.load(key)
                    assert current is not None
                    data = json.loads(current.data)
                    data[f"t{n}"] = i
                    new = make_record(json.dumps(data).encode(), version=current.version + 1)
                    if store.save(key, new, expected_version=current.version):
                        break

        _run_threads(_THREADS, writer)
        loaded = store.load(key)
        assert loaded is not None
        assert json.loads(loaded.data) == {f"t{n}": writes_each - 1 for n in range(_THREADS)}
        assert loaded.version == 1 + _THREADS * writes_each

    # -- expiry ----------------------------------------------------------------

    def test_expired_record_is_never_loaded(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(b"gone", ttl=-1), expected_version=None)
        assert store.load(key) is None

    def test_refresh_moves_expiry_and_keeps_data(self, store: Store) -> None:
        key = new_key()
        record = make_record(b"keep", ttl=60)
        assert store.save(key, record, expected_version=None)
        later = record.expires_at + 3600
        assert store.refresh(key, later, record.last_seen + 5)
        loaded = store.load(key)
        assert loaded is not None
        assert (loaded.data, loaded.version) == (b"keep", 1)
        assert abs(loaded.expires_at - later) < 0.01
        assert abs(loaded.last_seen - (record.last_seen + 5)) < 0.01

    def test_refresh_keeps_the_version_so_a_pending_save_still_applies(self, store: Store) -> None:
        key = new_key()
        record = make_record(b"v1", ttl=60)
        assert store.save(key, record, expected_version=None)
        assert store.refresh(key, record.expires_at + 60, record.last_seen)
        assert store.save(key, make_record(b"v2", version=2), expected_version=1)

    def test_refresh_never_shortens_an_expiry(self, store: Store) -> None:
        key = new_key()
        record = make_record(b"long", ttl=7200)
        assert store.save(key, record, expected_version=None)
        assert store.refresh(key, record.expires_at - 3600, record.last_seen)
        loaded = store.load(key)
        assert loaded is not None
        assert abs(loaded.expires_at - record.expires_at) < 0.01

    def test_refresh_of_missing_record_returns_false(self, store: Store) -> None:
        assert not store.refresh(new_key(), time.time() + 60, time.time())

    def test_refresh_of_expired_record_returns_false_and_does_not_revive_it(
        self, store: Store
    ) -> None:
        key = new_key()
        assert store.save(key, make_record(b"old", ttl=-5), expected_version=None)
        assert not store.refresh(key, time.time() + 60, time.time())
        assert store.load(key) is None

    # -- delete and cleanup ----------------------------------------------------

    def test_delete_returns_whether_a_live_record_was_there(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(), expected_version=None)
        assert store.delete(key)
        assert store.load(key) is None
        assert not store.delete(key)

    def test_delete_of_missing_record_is_not_an_error(self, store: Store) -> None:
        assert not store.delete(new_key())

    def test_cleanup_removes_expired_and_keeps_live(self, store: Store) -> None:
        live = [new_key() for _ in range(3)]
        dead = [new_key() for _ in range(4)]
        for key in live:
            assert store.save(key, make_record(b"live"), expected_version=None)
        for key in dead:
            assert store.save(key, make_record(b"dead", ttl=-5), expected_version=None)
        removed = store.cleanup()
        assert removed == (0 if store.native_expiry else len(dead))
        for key in live:
            assert store.load(key) is not None
        for key in dead:
            assert store.load(key) is None
        assert store.cleanup() == 0

    def test_cleanup_honours_its_limit(self, store: Store) -> None:
        for _ in range(5):
            assert store.save(new_key(), make_record(ttl=-5), expected_version=None)
        if store.native_expiry:
            assert store.cleanup(limit=2) == 0
            return
        assert store.cleanup(limit=2) == 2
        assert store.cleanup(limit=10) == 3

    def test_count_is_none_or_counts_live_records(self, store: Store) -> None:
        for _ in range(3):
            assert store.save(new_key(), make_record(), expected_version=None)
        assert store.save(new_key(), make_record(ttl=-5), expected_version=None)
        assert store.count() in (None, 3)

    # -- the user index ------------------------------------------------------------

    def test_user_records_lists_the_users_live_records(self, store: Store) -> None:
        mine = [new_key() for _ in range(3)]
        for key in mine:
            assert store.save(key, make_record(key.encode(), user_id="ann"), expected_version=None)
        assert store.save(new_key(), make_record(user_id="bob"), expected_version=None)
        assert store.save(new_key(), make_record(), expected_version=None)
        found = dict(store.user_records("ann"))
        assert sorted(found) == sorted(mine)
        assert all(found[key].data == key.encode() for key in mine)
        assert all(record.user_id == "ann" for record in found.values())
        assert store.user_records("nobody") == []

    def test_user_records_never_lists_an_expired_record(self, store: Store) -> None:
        """An expired session is absent from its user's list without any cleanup run."""
        live, dead = new_key(), new_key()
        assert store.save(live, make_record(user_id="ann"), expected_version=None)
        assert store.save(dead, make_record(user_id="ann", ttl=-5), expected_version=None)
        assert [key for key, _ in store.user_records("ann")] == [live]

    def test_changing_the_user_moves_the_record_between_users(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(user_id="ann"), expected_version=None)
        assert store.save(key, make_record(version=2, user_id="bob"), expected_version=1)
        assert store.user_records("ann") == []
        assert [k for k, _ in store.user_records("bob")] == [key]
        assert store.save(key, make_record(version=3), expected_version=2)
        assert store.user_records("bob") == []

    def test_delete_unlinks_the_record(self, store: Store) -> None:
        key = new_key()
        assert store.save(key, make_record(user_id="ann"), expected_version=None)
        assert store.delete(key)
        assert store.user_records("ann") == []

    def test_replaces_moves_the_index_entry(self, store: Store) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(user_id="ann"), expected_version=None)
        assert store.save(new, make_record(user_id="ann"), expected_version=None, replaces=old)
        assert [key for key, _ in store.user_records("ann")] == [new]

    def test_refresh_keeps_the_record_listed_with_its_new_expiry(self, store: Store) -> None:
        key = new_key()
        record = make_record(user_id="ann", ttl=60)
        assert store.save(key, record, expected_version=None)
        assert store.refresh(key, record.expires_at + 3600, record.last_seen + 1)
        [(found_key, found)] = store.user_records("ann")
        assert found_key == key
        assert abs(found.expires_at - (record.expires_at + 3600)) < 0.01

    def test_cleanup_keeps_the_users_live_records(self, store: Store) -> None:
        live = new_key()
        assert store.save(live, make_record(user_id="ann"), expected_version=None)
        for _ in range(3):
            assert store.save(new_key(), make_record(user_id="ann", ttl=-5), expected_version=None)
        store.cleanup()
        assert [key for key, _ in store.user_records("ann")] == [live]

    def test_user_ids_are_taken_verbatim(self, store: Store) -> None:
        odd = ["a:b", "a*b?[c]", "user/../x", "\u00e9l\u00e8ve", "x" * 200, "Ann", "ann", "ann "]
        keys = {user: new_key() for user in odd}
        for user, key in keys.items():
            assert store.save(key, make_record(user_id=user), expected_version=None)
        for user, key in keys.items():
            assert [k for k, _ in store.user_records(user)] == [key], user

    def test_index_matches_live_sessions_after_threads_log_in_and_out(self, store: Store) -> None:
        """16 threads logging one user in and out leave the index exactly right."""
        kept: list[str] = []

        def churn(n: int) -> None:
            for i in range(6):
                key = new_key()
                assert store.save(key, make_record(user_id="ann"), expected_version=None)
                if (n + i) % 2:
                    assert store.delete(key)
                else:
                    kept.append(key)

        _run_threads(_THREADS, churn)
        assert sorted(key for key, _ in store.user_records("ann")) == sorted(kept)

    # -- housekeeping ----------------------------------------------------------

    def test_ping_reaches_the_backend(self, store: Store) -> None:
        store.ping()

    def test_claim_purge_answers_a_bool(self, store: Store) -> None:
        assert isinstance(store.claim_purge(60), bool)

    def test_close_can_be_called_twice(self, store: Store) -> None:
        store.close()
        store.close()

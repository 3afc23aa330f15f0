"""Tests of reading, expiry, deletion and housekeeping."""

from __future__ import annotations

import time

from ..stores.base import Store
from ._helpers import create, loads, make_record, new_key

__all__ = ["RecordTests"]


class RecordTests:
    """Tests of reading, expiry, deletion and housekeeping.

    Part of :class:`~wsgisession.testing.StoreConformance`.
    """

    # -- load and create ------------------------------------------------------

    def test_missing_key_loads_none(self, store: Store) -> None:
        assert store.load(new_key()) is None, "load() of a key never written returned a record"

    def test_created_record_round_trips(self, store: Store) -> None:
        key = new_key()
        record = make_record(b'{"a": 1}', user_id="user-\u00e9", meta=b'{"r": true}')
        create(store, key, record)
        loaded = loads(store, key, "a record just created")
        assert loaded.data == record.data, (
            f"data saved as {record.data!r} loads as {loaded.data!r}"
        )
        assert loaded.version == 1, f"a record saved as version 1 loads as {loaded.version}"
        assert loaded.user_id == "user-\u00e9", f"user_id 'user-é' loads as {loaded.user_id!r}"
        assert loaded.meta == record.meta, (
            f"meta saved as {record.meta!r} loads as {loaded.meta!r}"
        )
        for field in ("created_at", "expires_at", "last_seen"):
            saved, got = getattr(record, field), getattr(loaded, field)
            assert abs(got - saved) < 0.01, f"{field} saved as {saved} loads as {got}"

    def test_record_without_user_round_trips(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(b"x"))
        loaded = loads(store, key, "a record just created without a user")
        assert loaded.user_id is None, f"user_id None loads as {loaded.user_id!r}"
        assert loaded.meta == b"", f"empty meta loads as {loaded.meta!r}"

    def test_create_fails_when_a_live_record_exists(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(b"first"))
        assert not store.save(key, make_record(b"second"), expected_version=None), (
            "save(expected_version=None) over a live record returned True: creating must fail "
            "when a live record exists"
        )
        loaded = loads(store, key, "the first record, after a second create failed")
        assert loaded.data == b"first", f"a failed create overwrote the record: {loaded.data!r}"

    def test_create_overwrites_an_expired_record(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(b"old", ttl=-10))
        assert store.save(key, make_record(b"new"), expected_version=None), (
            "save(expected_version=None) over an expired record returned False: an expired "
            "record counts as no record"
        )
        loaded = loads(store, key, "a record created over an expired one")
        assert loaded.data == b"new", f"the expired record's data came back: {loaded.data!r}"

    def test_arbitrary_bytes_round_trip(self, store: Store) -> None:
        key = new_key()
        data, meta = bytes(range(256)) * 4, bytes(range(255, -1, -1))
        create(store, key, make_record(data, meta=meta))
        loaded = loads(store, key, "a record holding every byte value")
        assert loaded.data == data, "data holding every byte value 0-255 changed in the store"
        assert loaded.meta == meta, "meta holding every byte value 0-255 changed in the store"

    def test_one_megabyte_of_binary_data_round_trips(self, store: Store) -> None:
        key = new_key()
        data = bytes(range(256)) * 4096
        create(store, key, make_record(data))
        loaded = loads(store, key, "a record of one megabyte")
        assert loaded.data == data, (
            f"one megabyte of data loads as {len(loaded.data)} bytes that differ"
        )

    # -- expiry ----------------------------------------------------------------

    def test_expired_record_is_never_loaded(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(b"gone", ttl=-1))
        assert store.load(key) is None, (
            "load() returned a record whose expires_at has passed (by the application's clock)"
        )

    def test_refresh_moves_expiry_and_keeps_data(self, store: Store) -> None:
        key = new_key()
        record = make_record(b"keep", ttl=60)
        create(store, key, record)
        later = record.expires_at + 3600
        assert store.refresh(key, later, record.last_seen + 5), (
            "refresh() of a live record returned False"
        )
        loaded = loads(store, key, "a record just refreshed")
        assert (loaded.data, loaded.version) == (b"keep", 1), (
            f"refresh() changed the data or version: {loaded.data!r}, version {loaded.version}"
        )
        assert abs(loaded.expires_at - later) < 0.01, (
            f"refresh() to expires_at {later} left it at {loaded.expires_at}"
        )
        assert abs(loaded.last_seen - (record.last_seen + 5)) < 0.01, (
            f"refresh() to last_seen {record.last_seen + 5} left it at {loaded.last_seen}"
        )

    def test_refresh_keeps_the_version_so_a_pending_save_still_applies(self, store: Store) -> None:
        key = new_key()
        record = make_record(b"v1", ttl=60)
        create(store, key, record)
        assert store.refresh(key, record.expires_at + 60, record.last_seen), (
            "refresh() of a live record returned False"
        )
        assert store.save(key, make_record(b"v2", version=2), expected_version=1), (
            "a save expecting version 1 failed after a refresh: refresh() must not change "
            "the version"
        )

    def test_refresh_of_a_version_saved_over_since_changes_nothing(self, store: Store) -> None:
        """A refresh computed from an older record must not undo what a save since chose."""
        key = new_key()
        create(store, key, make_record(b"v1", ttl=60))
        assert store.save(key, make_record(b"v2", version=2, ttl=60), expected_version=1), (
            "save(expected_version=1) over a live record of version 1 returned False"
        )
        saved = loads(store, key, "a record just saved")
        assert not store.refresh(key, saved.expires_at + 3600, saved.last_seen + 5, version=1), (
            "refresh(version=1) of a record now at version 2 returned True"
        )
        loaded = loads(store, key, "a record after a refresh of an older version")
        assert (loaded.data, loaded.expires_at, loaded.last_seen) == (
            b"v2",
            saved.expires_at,
            saved.last_seen,
        ), "refresh() of an older version changed the record"
        assert store.refresh(key, saved.expires_at + 3600, saved.last_seen, version=2), (
            "refresh(version=2) of a live record of version 2 returned False"
        )
        moved = loads(store, key, "a record refreshed at its own version")
        assert abs(moved.expires_at - (saved.expires_at + 3600)) < 0.01, (
            f"refresh(version=2) left expires_at at {moved.expires_at}"
        )

    def test_refresh_never_shortens_an_expiry(self, store: Store) -> None:
        key = new_key()
        record = make_record(b"long", ttl=7200)
        create(store, key, record)
        assert store.refresh(key, record.expires_at - 3600, record.last_seen), (
            "refresh() of a live record to an earlier expiry returned False"
        )
        loaded = loads(store, key, "a record refreshed to an earlier expiry")
        assert abs(loaded.expires_at - record.expires_at) < 0.01, (
            f"refresh() shortened expires_at from {record.expires_at} to {loaded.expires_at}: "
            "it must keep the later of the stored and the given value"
        )

    def test_refresh_of_missing_record_returns_false(self, store: Store) -> None:
        assert not store.refresh(new_key(), time.time() + 60, time.time()), (
            "refresh() of a key never written returned True"
        )

    def test_refresh_of_expired_record_returns_false_and_does_not_revive_it(
        self, store: Store
    ) -> None:
        key = new_key()
        create(store, key, make_record(b"old", ttl=-5))
        assert not store.refresh(key, time.time() + 60, time.time()), (
            "refresh() of an expired record returned True"
        )
        assert store.load(key) is None, "refresh() brought an expired record back to life"

    # -- delete and cleanup ----------------------------------------------------

    def test_delete_returns_whether_a_live_record_was_there(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record())
        assert store.delete(key), "delete() of a live record returned False"
        assert store.load(key) is None, "a deleted record can still be loaded"
        assert not store.delete(key), "a second delete() of the same key returned True"

    def test_delete_of_missing_record_is_not_an_error(self, store: Store) -> None:
        assert not store.delete(new_key()), "delete() of a key never written returned True"

    def test_cleanup_removes_expired_and_keeps_live(self, store: Store) -> None:
        live = [new_key() for _ in range(3)]
        dead = [new_key() for _ in range(4)]
        for key in live:
            create(store, key, make_record(b"live"))
        for key in dead:
            create(store, key, make_record(b"dead", ttl=-5))
        removed = store.cleanup()
        expected = 0 if store.native_expiry else len(dead)
        assert removed == expected, (
            f"cleanup() with {len(dead)} expired records returned {removed}, not {expected}"
            + (" (a store with native_expiry returns 0)" if store.native_expiry else "")
        )
        for key in live:
            loads(store, key, "a live record after cleanup()")
        for key in dead:
            assert store.load(key) is None, "an expired record loads after cleanup()"
        again = store.cleanup()
        assert again == 0, f"a second cleanup() with nothing expired returned {again}"

    def test_cleanup_honours_its_limit(self, store: Store) -> None:
        for _ in range(5):
            create(store, new_key(), make_record(ttl=-5))
        if store.native_expiry:
            removed = store.cleanup(limit=2)
            assert removed == 0, f"cleanup() of a store with native_expiry returned {removed}"
            return
        first, second = store.cleanup(limit=2), store.cleanup(limit=10)
        assert (first, second) == (2, 3), (
            f"cleanup(limit=2) then cleanup(limit=10) of 5 expired records returned "
            f"{first} and {second}, not 2 and 3"
        )

    def test_count_counts_live_records_or_always_says_it_cannot(self, store: Store) -> None:
        """``None`` means "can't tell cheaply", for good: not a count that comes and goes."""
        empty = store.count()
        for _ in range(3):
            create(store, new_key(), make_record())
        create(store, new_key(), make_record(ttl=-5))
        counted = store.count()
        if empty is None:
            assert counted is None, f"count() said None once, then {counted}"
        else:
            assert (empty, counted) == (0, 3), (
                f"count() of an empty store was {empty}, and with 3 live records and one "
                f"expired {counted}: not the number of live records"
            )

    # -- housekeeping ----------------------------------------------------------

    def test_ping_reaches_the_backend(self, store: Store) -> None:
        """Raising is the failure: a working backend must ping without error."""
        store.ping()

    def test_claim_purge_lets_one_purge_per_interval(self, store: Store) -> None:
        """A store shared by processes grants the purge once per interval; one that
        lives in a single process (the base implementation) always may."""
        first, second = store.claim_purge(60), store.claim_purge(60)
        if type(store).claim_purge is Store.claim_purge:
            assert (first, second) == (True, True), (
                f"the base claim_purge() said {first}, {second}: it always says True"
            )
        else:
            assert (first, second) == (True, False), (
                f"claim_purge(60) twice said {first}, {second}: an overriding store must "
                "grant the first claim of an interval and refuse the second"
            )

    def test_close_can_be_called_twice(self, store: Store) -> None:
        """Raising is the failure: close() must be safe to call again."""
        store.close()
        store.close()

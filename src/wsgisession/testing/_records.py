"""Tests of reading, expiry, deletion and housekeeping."""

from __future__ import annotations

import time

from ..stores.base import Store
from ._helpers import make_record, new_key

__all__ = ["RecordTests"]


class RecordTests:
    """Tests of reading, expiry, deletion and housekeeping.

    Part of :class:`~wsgisession.testing.StoreConformance`.
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

    def test_count_counts_live_records_or_always_says_it_cannot(self, store: Store) -> None:
        """``None`` means "can't tell cheaply", for good: not a count that comes and goes."""
        empty = store.count()
        for _ in range(3):
            assert store.save(new_key(), make_record(), expected_version=None)
        assert store.save(new_key(), make_record(ttl=-5), expected_version=None)
        if empty is None:
            assert store.count() is None, "count() said None once, then a number"
        else:
            assert (empty, store.count()) == (0, 3), "count() is not the live records"

    # -- housekeeping ----------------------------------------------------------

    def test_ping_reaches_the_backend(self, store: Store) -> None:
        store.ping()

    def test_claim_purge_lets_one_purge_per_interval(self, store: Store) -> None:
        """A store shared by processes grants the purge once per interval; one that
        lives in a single process (the base implementation) always may."""
        first, second = store.claim_purge(60), store.claim_purge(60)
        if type(store).claim_purge is Store.claim_purge:
            assert (first, second) == (True, True)
        else:
            assert (first, second) == (True, False), "two purges granted in one interval"

    def test_close_can_be_called_twice(self, store: Store) -> None:
        store.close()
        store.close()

"""Tests of the compare-and-set save, alone and under races."""

from __future__ import annotations

import json
import time

from ..stores.base import Store
from ._helpers import THREADS, every_write_lands, make_record, move, new_key, run_threads

__all__ = ["WriteTests"]


class WriteTests:
    """Tests of the compare-and-set save, alone and under races.

    Part of :class:`~wsgisession.testing.StoreConformance`.
    """

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
        assert move(store, old, new, replaces_version=2)
        assert store.load(old) is None
        loaded = store.load(new)
        assert loaded is not None and (loaded.data, loaded.version) == (b"moved", 1)
        assert [key for key, _ in store.user_records("ann")] == [new]

    def test_replaces_with_a_stale_version_writes_and_deletes_nothing(self, store: Store) -> None:
        """A regenerate that merged onto an old version must not drop the newer write."""
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"v1", user_id="ann"), expected_version=None)
        assert store.save(old, make_record(b"v2", version=2, user_id="ann"), expected_version=1)
        assert not move(store, old, new, replaces_version=1)
        assert store.load(new) is None
        loaded = store.load(old)
        assert loaded is not None and (loaded.data, loaded.version) == (b"v2", 2)
        assert [key for key, _ in store.user_records("ann")] == [old]

    def test_replaces_version_of_a_deleted_record_creates_nothing(self, store: Store) -> None:
        """A regenerate must not undo a logout that deleted the old record."""
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"v1", user_id="ann"), expected_version=None)
        assert store.delete(old)
        assert not move(store, old, new, replaces_version=1)
        assert store.load(new) is None
        assert store.load(old) is None
        assert store.user_records("ann") == []

    def test_replaces_version_of_an_expired_record_creates_nothing(self, store: Store) -> None:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"v1", user_id="ann", ttl=-10), expected_version=None)
        assert not move(store, old, new, replaces_version=1)
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

        run_threads(THREADS, lambda n: regenerate() if n == 0 else writer(n))
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

        run_threads(THREADS, race)
        assert len(wins) == 1
        loaded = store.load(key)
        assert loaded is not None and loaded.data == str(wins[0]).encode()

    def test_one_winner_when_threads_race_to_create(self, store: Store) -> None:
        key = new_key()
        wins: list[int] = []

        def race(n: int) -> None:
            if store.save(key, make_record(str(n).encode()), expected_version=None):
                wins.append(n)

        run_threads(THREADS, race)
        assert len(wins) == 1

    def test_concurrent_disjoint_writes_all_survive(self, store: Store) -> None:
        """Threads merging their own key by compare-and-set lose nobody's write."""

        def write(key: str, n: int, i: int) -> None:
            while True:
                current = store.load(key)
                assert current is not None
                data = json.loads(current.data)
                data[f"t{n}"] = i
                new = make_record(json.dumps(data).encode(), version=current.version + 1)
                if store.save(key, new, expected_version=current.version):
                    return

        every_write_lands(store, write)

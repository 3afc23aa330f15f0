"""Tests of the compare-and-set save, alone and under races."""

from __future__ import annotations

import json
import time

from ..stores.base import Store
from ._helpers import (
    THREADS,
    create,
    every_write_lands,
    loads,
    make_record,
    move,
    new_key,
    run_threads,
)

__all__ = ["WriteTests"]


class WriteTests:
    """Tests of the compare-and-set save, alone and under races.

    Part of :class:`~wsgisession.testing.StoreConformance`.
    """

    # -- compare-and-set -------------------------------------------------------

    def test_save_with_current_version_replaces_the_record(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(b"v1"))
        assert store.save(key, make_record(b"v2", version=2, user_id="u"), expected_version=1), (
            "save(expected_version=1) over a live record of version 1 returned False"
        )
        loaded = loads(store, key, "a record just replaced by a compare-and-set")
        assert (loaded.data, loaded.version, loaded.user_id) == (b"v2", 2, "u"), (
            f"the replaced record loads as {loaded.data!r}, version {loaded.version}, user "
            f"{loaded.user_id!r}, not as the record written"
        )

    def test_stale_version_writes_nothing(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(b"v1"))
        assert store.save(key, make_record(b"v2", version=2), expected_version=1), (
            "save(expected_version=1) over a live record of version 1 returned False"
        )
        assert not store.save(key, make_record(b"stale", version=2), expected_version=1), (
            "save(expected_version=1) over a record now at version 2 returned True: "
            "a stale compare-and-set must fail"
        )
        loaded = loads(store, key, "the record after a stale save")
        assert (loaded.data, loaded.version) == (b"v2", 2), (
            f"a stale save changed the record: {loaded.data!r}, version {loaded.version}"
        )

    def test_save_with_a_version_on_a_missing_key_writes_nothing(self, store: Store) -> None:
        key = new_key()
        assert not store.save(key, make_record(b"v2", version=2), expected_version=1), (
            "save(expected_version=1) on a key holding nothing returned True"
        )
        assert store.load(key) is None, "a failed compare-and-set on an empty key wrote a record"

    def test_save_after_delete_does_not_resurrect(self, store: Store) -> None:
        """A request that loaded a session a logout then deleted must not bring it back."""
        key = new_key()
        create(store, key, make_record(b"v1"))
        assert store.delete(key), "delete() of a live record returned False"
        assert not store.save(key, make_record(b"v2", version=2), expected_version=1), (
            "save(expected_version=1) after the record was deleted returned True"
        )
        assert store.load(key) is None, "a save after a delete brought the session back"

    def test_save_on_an_expired_record_writes_nothing(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(b"v1", ttl=-10))
        assert not store.save(key, make_record(b"v2", version=2), expected_version=1), (
            "save(expected_version=1) over an expired record of version 1 returned True: "
            "an expired record counts as no record"
        )
        assert store.load(key) is None, "a save over an expired record brought it back"

    def test_replaces_deletes_the_old_record(self, store: Store) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(b"data", user_id="u"))
        assert store.save(
            new, make_record(b"data", user_id="u"), expected_version=None, replaces=old
        ), "save(replaces=old) of a new record under a free key returned False"
        assert store.load(old) is None, "save(replaces=old) left the old record in place"
        loaded = loads(store, new, "the record written with replaces=")
        assert loaded.data == b"data", f"the moved record loads as {loaded.data!r}"

    def test_failed_save_with_replaces_keeps_the_old_record(self, store: Store) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(b"old"))
        create(store, new, make_record(b"taken"))
        assert not store.save(new, make_record(b"mine"), expected_version=None, replaces=old), (
            "save(expected_version=None, replaces=old) onto a key holding a live record "
            "returned True"
        )
        loaded_old = loads(store, old, "the old record, after a failed save with replaces=")
        loaded_new = loads(store, new, "the record in the way of a failed save")
        assert loaded_old.data == b"old", "a failed save with replaces= changed the old record"
        assert loaded_new.data == b"taken", "a failed save overwrote the record in its way"

    def test_replaces_with_the_current_version_moves_the_record(self, store: Store) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(b"v1", user_id="ann"))
        assert store.save(old, make_record(b"v2", version=2, user_id="ann"), expected_version=1), (
            "save(expected_version=1) over a live record of version 1 returned False"
        )
        assert move(store, old, new, replaces_version=2), (
            "save(replaces=old, replaces_version=2) with the old record at version 2 "
            "returned False"
        )
        assert store.load(old) is None, "a move with the current replaces_version kept the old"
        loaded = loads(store, new, "the record a move wrote")
        assert (loaded.data, loaded.version) == (b"moved", 1), (
            f"the moved record loads as {loaded.data!r}, version {loaded.version}"
        )
        listed = [key for key, _ in store.user_records("ann")]
        assert listed == [new], f"after a move the user index lists {listed}, not the new key"

    def test_replaces_with_a_stale_version_writes_and_deletes_nothing(self, store: Store) -> None:
        """A regenerate that merged onto an old version must not drop the newer write."""
        old, new = new_key(), new_key()
        create(store, old, make_record(b"v1", user_id="ann"))
        assert store.save(old, make_record(b"v2", version=2, user_id="ann"), expected_version=1), (
            "save(expected_version=1) over a live record of version 1 returned False"
        )
        assert not move(store, old, new, replaces_version=1), (
            "save(replaces=old, replaces_version=1) with the old record at version 2 "
            "returned True: it must fail and leave both keys as they were"
        )
        assert store.load(new) is None, "a move with a stale replaces_version wrote the new key"
        loaded = loads(store, old, "the old record, after a stale move")
        assert (loaded.data, loaded.version) == (b"v2", 2), (
            f"a stale move changed the old record: {loaded.data!r}, version {loaded.version}"
        )
        listed = [key for key, _ in store.user_records("ann")]
        assert listed == [old], f"after a failed move the user index lists {listed}"

    def test_replaces_version_of_a_deleted_record_creates_nothing(self, store: Store) -> None:
        """A regenerate must not undo a logout that deleted the old record."""
        old, new = new_key(), new_key()
        create(store, old, make_record(b"v1", user_id="ann"))
        assert store.delete(old), "delete() of a live record returned False"
        assert not move(store, old, new, replaces_version=1), (
            "save(replaces=old, replaces_version=1) after the old record was deleted "
            "returned True: a regenerate must not undo a logout"
        )
        assert store.load(new) is None, "a move of a deleted record wrote the new key"
        assert store.load(old) is None, "a move of a deleted record brought it back"
        listed = store.user_records("ann")
        assert listed == [], f"a failed move of a deleted record left the user index {listed}"

    def test_replaces_version_of_an_expired_record_creates_nothing(self, store: Store) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(b"v1", user_id="ann", ttl=-10))
        assert not move(store, old, new, replaces_version=1), (
            "save(replaces=old, replaces_version=1) with the old record expired returned True"
        )
        assert store.load(new) is None, "a move of an expired record wrote the new key"
        listed = store.user_records("ann")
        assert listed == [], f"a failed move of an expired record left the user index {listed}"

    def test_failed_write_with_the_right_replaces_version_keeps_the_old_record(
        self, store: Store
    ) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(b"old", user_id="ann"))
        create(store, new, make_record(b"taken"))
        assert not store.save(
            new,
            make_record(b"mine", user_id="ann"),
            expected_version=None,
            replaces=old,
            replaces_version=1,
        ), "a create with the right replaces_version onto a taken key returned True"
        assert not store.save(
            new,
            make_record(b"mine", version=3, user_id="ann"),
            expected_version=2,
            replaces=old,
            replaces_version=1,
        ), "a save expecting version 2 of a record at version 1 returned True"
        loaded_old = loads(store, old, "the old record, after failed saves with replaces=")
        loaded_new = loads(store, new, "the record in the way of failed saves")
        assert loaded_old.data == b"old", "a failed save deleted or changed the replaced record"
        assert loaded_new.data == b"taken", "a failed save overwrote the record in its way"
        listed = [key for key, _ in store.user_records("ann")]
        assert listed == [old], f"after failed moves the user index lists {listed}"

    def test_replaces_version_applies_to_a_compare_and_set_too(self, store: Store) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(b"old", version=4))
        create(store, new, make_record(b"v1"))
        assert not store.save(
            new,
            make_record(b"v2", version=2),
            expected_version=1,
            replaces=old,
            replaces_version=3,
        ), "a compare-and-set with replaces_version=3 of a record at version 4 returned True"
        assert store.save(
            new,
            make_record(b"v2", version=2),
            expected_version=1,
            replaces=old,
            replaces_version=4,
        ), "a compare-and-set with both versions right returned False"
        assert store.load(old) is None, "a compare-and-set with replaces= kept the old record"
        loaded = loads(store, new, "the record a compare-and-set with replaces= wrote")
        assert (loaded.data, loaded.version) == (b"v2", 2), (
            f"the record loads as {loaded.data!r}, version {loaded.version}"
        )

    def test_regenerate_racing_writes_to_the_old_key_loses_none(self, store: Store) -> None:
        """One thread moves a record to a new key while the others write the old one.

        Each attempt of the move merges onto the version it read and names it as
        ``replaces_version``: either it fails, leaving the new key absent and the old
        record with the others' writes, or it wins, and every write that landed on the
        old key before it is in the moved record while every later one fails.
        """
        old, new = new_key(), new_key()
        create(store, old, make_record(b"{}", user_id="ann"))
        writes_each = 5
        landed: dict[int, int] = {}
        moved: list[dict[str, object]] = []

        def regenerate() -> None:
            while True:
                current = store.load(old)
                assert current is not None, "the old record vanished, and only the move deletes it"
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
        assert len(moved) == 1, f"the move succeeded {len(moved)} times, not once"
        [data] = moved
        assert store.load(old) is None, "a successful move left the old record in place"
        loaded = loads(store, new, "the record the move wrote")
        assert json.loads(loaded.data) == data, "the moved record is not the one the move wrote"
        expected = {"moved": True, **{f"t{n}": i for n, i in landed.items()}}
        assert data == expected, "a write to the old key was lost, or one that failed kept"
        listed = [key for key, _ in store.user_records("ann")]
        assert listed == [new], f"after the move the user index lists {listed}"

    def test_one_winner_when_threads_race_on_a_version(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(b"v1"))
        wins: list[int] = []

        def race(n: int) -> None:
            if store.save(key, make_record(str(n).encode(), version=2), expected_version=1):
                wins.append(n)

        run_threads(THREADS, race)
        assert len(wins) == 1, (
            f"{len(wins)} of {THREADS} threads saving over version 1 at once succeeded, not one"
        )
        loaded = loads(store, key, "the record threads raced to replace")
        assert loaded.data == str(wins[0]).encode(), (
            f"the winner wrote {str(wins[0]).encode()!r}, the record holds {loaded.data!r}"
        )

    def test_one_winner_when_threads_race_to_create(self, store: Store) -> None:
        key = new_key()
        wins: list[int] = []

        def race(n: int) -> None:
            if store.save(key, make_record(str(n).encode()), expected_version=None):
                wins.append(n)

        run_threads(THREADS, race)
        assert len(wins) == 1, (
            f"{len(wins)} of {THREADS} threads creating one key at once succeeded, not one"
        )

    def test_concurrent_disjoint_writes_all_survive(self, store: Store) -> None:
        """Threads merging their own key by compare-and-set lose nobody's write."""

        def write(key: str, n: int, i: int) -> None:
            while True:
                current = loads(store, key, "the record that concurrent writers share")
                data = json.loads(current.data)
                data[f"t{n}"] = i
                new = make_record(json.dumps(data).encode(), version=current.version + 1)
                if store.save(key, new, expected_version=current.version):
                    return

        every_write_lands(store, write)

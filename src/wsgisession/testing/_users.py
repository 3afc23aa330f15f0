"""Tests of the user index behind ``Store.user_records``."""

from __future__ import annotations

from ..stores.base import Store
from ._helpers import THREADS, make_record, new_key, run_threads

__all__ = ["UserIndexTests"]


class UserIndexTests:
    """Tests of the user index behind ``Store.user_records``.

    Part of :class:`~wsgisession.testing.StoreConformance`.
    """

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

        run_threads(THREADS, churn)
        assert sorted(key for key, _ in store.user_records("ann")) == sorted(kept)

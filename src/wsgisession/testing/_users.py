"""Tests of the user index behind ``Store.user_records``."""

from __future__ import annotations

from ..stores.base import Store
from ._helpers import THREADS, create, make_record, new_key, run_threads

__all__ = ["UserIndexTests"]


def _listed(store: Store, user_id: str) -> list[str]:
    """The keys ``user_records(user_id)`` lists, in its order."""
    return [key for key, _ in store.user_records(user_id)]


class UserIndexTests:
    """Tests of the user index behind ``Store.user_records``.

    Part of :class:`~wsgisession.testing.StoreConformance`.
    """

    # -- the user index ------------------------------------------------------------

    def test_user_records_lists_the_users_live_records(self, store: Store) -> None:
        mine = [new_key() for _ in range(3)]
        for key in mine:
            create(store, key, make_record(key.encode(), user_id="ann"))
        create(store, new_key(), make_record(user_id="bob"))
        create(store, new_key(), make_record())
        found = dict(store.user_records("ann"))
        assert sorted(found) == sorted(mine), (
            f"user_records('ann') lists {len(found)} keys, not exactly ann's 3 records"
        )
        assert all(found[key].data == key.encode() for key in mine), (
            "user_records() paired a key with another key's record"
        )
        assert all(record.user_id == "ann" for record in found.values()), (
            "user_records('ann') returned a record of another user"
        )
        nobody = store.user_records("nobody")
        assert nobody == [], f"user_records() of a user without sessions returned {nobody}"

    def test_user_records_never_lists_an_expired_record(self, store: Store) -> None:
        """An expired session is absent from its user's list without any cleanup run."""
        live, dead = new_key(), new_key()
        create(store, live, make_record(user_id="ann"))
        create(store, dead, make_record(user_id="ann", ttl=-5))
        listed = _listed(store, "ann")
        assert listed == [live], (
            f"user_records() lists {len(listed)} keys for one live and one expired record: "
            "an expired record must never be listed"
        )

    def test_changing_the_user_moves_the_record_between_users(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(user_id="ann"))
        assert store.save(key, make_record(version=2, user_id="bob"), expected_version=1), (
            "save(expected_version=1) over a live record of version 1 returned False"
        )
        assert _listed(store, "ann") == [], "a record saved for bob is still listed for ann"
        assert _listed(store, "bob") == [key], "a record saved for bob is not listed for bob"
        assert store.save(key, make_record(version=3), expected_version=2), (
            "save(expected_version=2) over a live record of version 2 returned False"
        )
        assert _listed(store, "bob") == [], "a record saved without a user is still bob's"

    def test_delete_unlinks_the_record(self, store: Store) -> None:
        key = new_key()
        create(store, key, make_record(user_id="ann"))
        assert store.delete(key), "delete() of a live record returned False"
        assert _listed(store, "ann") == [], "a deleted record is still listed for its user"

    def test_replaces_moves_the_index_entry(self, store: Store) -> None:
        old, new = new_key(), new_key()
        create(store, old, make_record(user_id="ann"))
        assert store.save(new, make_record(user_id="ann"), expected_version=None, replaces=old), (
            "save(replaces=old) of a new record under a free key returned False"
        )
        listed = _listed(store, "ann")
        assert listed == [new], (
            f"after save(replaces=old) the user index lists {len(listed)} keys, not the new one"
        )

    def test_refresh_keeps_the_record_listed_with_its_new_expiry(self, store: Store) -> None:
        key = new_key()
        record = make_record(user_id="ann", ttl=60)
        create(store, key, record)
        assert store.refresh(key, record.expires_at + 3600, record.last_seen + 1), (
            "refresh() of a live record returned False"
        )
        found = store.user_records("ann")
        assert [k for k, _ in found] == [key], "a refreshed record is not listed for its user"
        listed_expiry = found[0][1].expires_at
        assert abs(listed_expiry - (record.expires_at + 3600)) < 0.01, (
            f"user_records() shows the expiry before the refresh ({listed_expiry}), "
            f"not {record.expires_at + 3600}"
        )

    def test_cleanup_keeps_the_users_live_records(self, store: Store) -> None:
        live = new_key()
        create(store, live, make_record(user_id="ann"))
        for _ in range(3):
            create(store, new_key(), make_record(user_id="ann", ttl=-5))
        store.cleanup()
        listed = _listed(store, "ann")
        assert listed == [live], (
            f"after cleanup() user_records() lists {len(listed)} keys, not the one live record"
        )

    def test_user_ids_are_taken_verbatim(self, store: Store) -> None:
        odd = ["a:b", "a*b?[c]", "user/../x", "\u00e9l\u00e8ve", "x" * 200, "Ann", "ann", "ann "]
        keys = {user: new_key() for user in odd}
        for user, key in keys.items():
            create(store, key, make_record(user_id=user))
        for user, key in keys.items():
            listed = _listed(store, user)
            assert listed == [key], (
                f"user_records({user!r}) lists {len(listed)} keys, not that user's one record: "
                "user ids must be compared verbatim (no patterns, case or trimming)"
            )

    def test_index_matches_live_sessions_after_threads_log_in_and_out(self, store: Store) -> None:
        """16 threads logging one user in and out leave the index exactly right."""
        kept: list[str] = []

        def churn(n: int) -> None:
            for i in range(6):
                key = new_key()
                create(store, key, make_record(user_id="ann"))
                if (n + i) % 2:
                    assert store.delete(key), "delete() of a live record returned False"
                else:
                    kept.append(key)

        run_threads(THREADS, churn)
        listed = _listed(store, "ann")
        assert sorted(listed) == sorted(kept), (
            f"after threads created and deleted sessions of one user, user_records() lists "
            f"{len(listed)} keys for {len(kept)} live records"
        )

"""The memcached store's user index: one value per user, changed by compare-and-set,
pruned when read, bounded, and relinked only when a session outlives it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import SERVER, FakeClock
from tests.memcached_servers import MemcachedServer
from wsgisession.errors import StoreError
from wsgisession.stores import _memcached_format, _memcached_index
from wsgisession.stores.memcached import MemcachedStore
from wsgisession.testing import make_record, new_key

pytestmark = SERVER


@pytest.fixture
def mc(private_memcached: MemcachedServer) -> Iterator[MemcachedStore]:
    """A store on a memcached of this test alone."""
    with MemcachedStore.from_url(private_memcached.url) as store:
        yield store


def _index(store: MemcachedStore, user_id: str) -> _memcached_format.Index | None:
    value = store.client.get(store._index.name(user_id))
    return None if value is None else _memcached_format.decode_index(value)


def _vanish(store: MemcachedStore, key: str) -> None:
    """Drop a session behind the store's back, as memcached's eviction does."""
    store.client.delete(store.key_prefix + key, noreply=False)


def test_the_index_names_its_user_and_lists_the_keys(mc: MemcachedStore) -> None:
    keys = [new_key() for _ in range(3)]
    for key in keys:
        assert mc.save(key, make_record(user_id="ann"), expected_version=None)
    index = _index(mc, "ann")
    assert index is not None and index.user_id == "ann"
    assert sorted(index.entries) == sorted(keys)
    assert mc._index.name("ann").startswith(mc.key_prefix + "u:")


def test_an_index_of_another_user_under_the_name_is_ignored(mc: MemcachedStore) -> None:
    """A hash collision, or a planted value, can't list one user's sessions for another."""
    key = new_key()
    assert mc.save(key, make_record(user_id="bob"), expected_version=None)
    planted = _memcached_format.Index("ann", 0.0, dict(_index(mc, "bob").entries))  # type: ignore[union-attr]
    mc.client.set(mc._index.name("ann"), _memcached_format.encode_index(planted), noreply=False)
    assert mc.user_records("ann") == []


def test_entries_of_ended_sessions_are_dropped_when_read(
    mc: MemcachedStore, clock: FakeClock
) -> None:
    kept, gone = new_key(), new_key()
    for key in (kept, gone):
        assert mc.save(key, make_record(user_id="ann", ttl=7200), expected_version=None)
    _vanish(mc, gone)
    assert [k for k, _ in mc.user_records("ann")] == [kept]
    index = _index(mc, "ann")
    assert index is not None and gone in index.entries, "dropped within the grace"
    clock.advance(_memcached_index.GRACE + 1)
    assert [k for k, _ in mc.user_records("ann")] == [kept]
    index = _index(mc, "ann")
    assert index is not None and sorted(index.entries) == [kept]


def test_an_entry_being_written_is_kept_though_its_session_is_missing(
    mc: MemcachedStore,
) -> None:
    """Linked before its session is written: a read in between must not drop it."""
    key = new_key()
    mc._index.link("ann", key, make_record().expires_at)
    assert mc.user_records("ann") == []
    assert mc.save(key, make_record(user_id="ann"), expected_version=None)
    assert [k for k, _ in mc.user_records("ann")] == [key]


def test_a_long_index_is_compacted_when_linked(mc: MemcachedStore, clock: FakeClock) -> None:
    """Past COMPACT_AT entries, a link checks every entry and drops the ended ones."""
    ended = [new_key() for _ in range(_memcached_index.COMPACT_AT)]
    for key in ended:
        assert mc.save(key, make_record(user_id="ann", ttl=7200), expected_version=None)
        _vanish(mc, key)  # evicted: no delete told the index
    clock.advance(_memcached_index.GRACE + 1)
    live = new_key()
    assert mc.save(live, make_record(user_id="ann", ttl=7200), expected_version=None)
    index = _index(mc, "ann")
    assert index is not None and len(index.entries) <= 2
    assert live in index.entries


def test_entries_whose_expiry_passed_are_checked_and_dropped_when_linked(
    mc: MemcachedStore, clock: FakeClock
) -> None:
    old = new_key()
    assert mc.save(old, make_record(user_id="ann", ttl=60), expected_version=None)
    clock.advance(120)
    new = new_key()
    assert mc.save(new, make_record(user_id="ann", ttl=60), expected_version=None)
    index = _index(mc, "ann")
    assert index is not None and sorted(index.entries) == [new]


def test_a_user_with_too_many_live_sessions_is_refused(
    mc: MemcachedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_memcached_index, "MAX_ENTRIES", 3)
    keys = [new_key() for _ in range(3)]
    for key in keys:
        assert mc.save(key, make_record(user_id="ann"), expected_version=None)
    extra = new_key()
    with pytest.raises(StoreError, match="3 live sessions"):
        mc.save(extra, make_record(user_id="ann"), expected_version=None)
    assert mc.load(extra) is None, "a session was written that its user's index misses"
    assert sorted(k for k, _ in mc.user_records("ann")) == sorted(keys)


def test_saves_within_the_indexed_time_leave_the_index_alone(mc: MemcachedStore) -> None:
    """A sliding session relinks about once per lifetime, not on every save."""
    key = new_key()
    assert mc.save(key, make_record(user_id="ann", ttl=3600), expected_version=None)
    _, token = mc.client.gets(mc._index.name("ann"))
    for version in range(2, 6):
        assert mc.save(
            key,
            make_record(user_id="ann", ttl=3600, version=version),
            expected_version=version - 1,
        )
    assert mc.client.gets(mc._index.name("ann"))[1] == token, "a save rewrote the index"
    index = _index(mc, "ann")
    assert index is not None
    # A save that outlives what the index was given links again.
    far = make_record(user_id="ann", ttl=index.until - make_record().expires_at + 7200, version=6)
    assert mc.save(key, far, expected_version=5)
    relinked = _index(mc, "ann")
    assert relinked is not None and relinked.until > index.until
    assert relinked.entries[key].expires_at == pytest.approx(far.expires_at)


def test_an_index_never_expires_before_its_sessions(
    mc: MemcachedStore, private_memcached: MemcachedServer
) -> None:
    from tests.stores.test_memcached import _ttl

    short, remembered = new_key(), new_key()
    assert mc.save(short, make_record(user_id="ann", ttl=600), expected_version=None)
    assert mc.save(remembered, make_record(user_id="ann", ttl=60 * 86400), expected_version=None)
    assert mc.save(short, make_record(user_id="ann", ttl=600, version=2), expected_version=1)
    index_ttl = _ttl(private_memcached.url, mc._index.name("ann"))
    session_ttl = _ttl(private_memcached.url, mc.key_prefix + remembered)
    assert index_ttl is not None and session_ttl is not None and index_ttl >= session_ttl


def test_a_user_change_unlinks_the_old_user_at_once(mc: MemcachedStore) -> None:
    key = new_key()
    assert mc.save(key, make_record(user_id="ann"), expected_version=None)
    assert mc.save(key, make_record(user_id="bob", version=2), expected_version=1)
    ann = _index(mc, "ann")
    assert ann is None or key not in ann.entries
    assert mc.delete(key)
    bob = _index(mc, "bob")
    assert bob is None or key not in bob.entries


def test_a_corrupt_index_is_rebuilt_by_the_next_link(mc: MemcachedStore) -> None:
    mc.client.set(mc._index.name("ann"), b"garbage", noreply=False)
    assert mc.user_records("ann") == []
    key = new_key()
    assert mc.save(key, make_record(user_id="ann"), expected_version=None)
    assert [k for k, _ in mc.user_records("ann")] == [key]

"""The memcached store's writes, step by step, in the order that fails safe.

Private to :mod:`wsgisession.stores.memcached`. Every write is a compare-and-set on
the cas token of a :class:`~wsgisession.stores._memcached_slots.Slot` (``cas``), or an
``add`` where nothing was read; a record with a user is linked in the user's index
first (see :mod:`~wsgisession.stores._memcached_index`).

Memcached can't change two keys in one step, so a move (a regenerate: the record
goes to a new key and the old one is emptied, or left a tombstone) is two writes:

1. the record is written under the new key, which only this request knows;
2. the old key is overwritten by compare-and-set on the token read before step 1.

If step 2 finds the old record changed (a concurrent request wrote it, a logout
deleted it, a locked save took its lock), the write of step 1 is taken back, if the
new key still holds it, and the move fails: the caller reads the old record again
and merges onto it, so no write is lost and no logout undone. Between the two steps
both keys hold the session; the old one answers its cookie as before. A failure
between them (the server gone, the process killed) leaves the new record orphaned:
no cookie names it, its user lists it until it expires or is ended, and the old
session goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Final

from pymemcache.exceptions import MemcacheError, MemcacheServerError

from .. import _clock
from ..errors import StoreError
from ._memcached_format import Stored, encode_record
from ._memcached_index import UserIndex
from ._memcached_servers import Servers
from ._memcached_slots import EMPTY, Reader, Slot
from .base import Record

__all__ = ["Writes"]

log = logging.getLogger("wsgisession")

_NEVER: Final = float("-inf")


class Writes:
    """The writes of one memcached store.

    :param servers: The store's servers.
    :param reader: Reads the store's keys.
    :param index: The store's user index.
    :param errors: Translates the driver's errors into :exc:`~wsgisession.StoreError`.
    :param name: The store's name in messages, its URL masked.
    """

    __slots__ = ("_errors", "_index", "_name", "_prefix", "_reader", "_servers")

    def __init__(
        self,
        servers: Servers,
        reader: Reader,
        index: UserIndex,
        errors: Callable[[], AbstractContextManager[None]],
        name: str,
    ) -> None:
        self._servers = servers
        self._reader = reader
        self._prefix = reader.prefix
        self._index = index
        self._errors = errors
        self._name = name

    def create(self, key: str, record: Record, slot: Slot | None, now: float) -> bytes | None:
        """Write *record* under *key* if no live record is there; return the value
        written, or ``None``.

        *slot* is what *key* held as read; ``None`` when unread, where an ``add``
        tries first, and a key that turns out to hold a dead record is read then.
        """
        value = encode_record(record, self.link(key, record, None, now))
        for _ in range(2):
            if slot is not None and (slot.locked or slot.live(now)):
                return None
            if self.put(key, value, None if slot is None else slot.token, record.expires_at, now):
                self._unlink_previous(key, slot, record)
                return value
            slot = self._reader.slots([key])[key]
        return None

    def update(
        self, key: str, record: Record, expected_version: int, slot: Slot, now: float
    ) -> bytes | None:
        """Write *record* in place of version *expected_version*, as *slot* read it;
        return the value written, or ``None``."""
        if slot.locked or slot.version(now) != expected_version:
            return None
        value = encode_record(record, self.link(key, record, slot.stored, now))
        if not self.put(key, value, slot.token, record.expires_at, now):
            return None
        self._unlink_previous(key, slot, record)
        return value

    def move(
        self,
        key: str,
        record: Record,
        expected_version: int | None,
        key_slot: Slot | None,
        old: str,
        old_slot: Slot,
        replaces_version: int | None,
        tombstone: Record | None,
    ) -> bool | None:
        """Write *record* under *key*, then empty *old* (or leave *tombstone* there).

        With *replaces_version*, *old* is overwritten by compare-and-set on
        *old_slot*'s token, and if that fails the write under *key* is taken back;
        without, whatever is there is overwritten. Return ``True`` once done,
        ``False`` if *key* could not be written, ``None`` if *old* changed.
        """
        now = _clock.now()
        if expected_version is None:
            value = self.create(key, record, key_slot, now)
        else:
            assert key_slot is not None
            value = self.update(key, record, expected_version, key_slot, now)
        if value is None:
            return False
        before = key_slot or EMPTY
        stone = b"" if tombstone is None else encode_record(tombstone)
        until = _NEVER if tombstone is None else tombstone.expires_at
        try:
            if replaces_version is not None:
                vacated = self.put(old, stone, old_slot.token, until, now)
            else:
                vacated = self._overwrite(old, stone, until, now)
        except StoreError:
            self._take_back(key, value, before, quiet=True)
            raise
        if not vacated:
            self._take_back(key, value, before)
            log.info("session %s changed while it moved to a new key; move undone", old[:8])
            return None
        gone = old_slot.stored.record.user_id if old_slot.stored else None
        if gone is not None:
            self._index.unlink(gone, [old])
        return True

    def put(
        self, key: str, value: bytes, token: bytes | None, expires_at: float, now: float
    ) -> bool:
        """Write *value* under *key* over the value of cas *token* (``add`` if none),
        to expire at *expires_at*; ``False`` if another writer got there first.

        :raises StoreError: The server failed, or refused *value* as larger than its
            item limit, which the message names.
        """
        name = self._prefix + key
        with self._errors():
            client = self._servers.for_key(key)
            expire = self._servers.exptime(client, expires_at, now)
            sender = self._servers.sender(client)
            try:
                if token is None:
                    return bool(sender.add(name, value, expire=expire, noreply=False))
                return sender.cas(name, value, token, expire=expire, noreply=False) is True
            except MemcacheServerError as exc:
                if "too large" not in str(exc):
                    raise
                raise StoreError(self._too_large(client, len(name), len(value))) from exc

    def link(self, key: str, record: Record, previous: Stored | None, now: float) -> float:
        """List *key* in its user's index before *record* is written; return how long
        the index lists it, which the record keeps.

        Nothing to do for a record without a user or already expired, or when the
        *previous* record, live and of the same user, was listed at least as long as
        *record* lives.
        """
        user_id = record.user_id
        if user_id is None or record.expires_at <= now:
            return 0.0
        if (
            previous is not None
            and previous.record.user_id == user_id
            and previous.record.expires_at > now
            and record.expires_at <= previous.indexed_until
        ):
            return previous.indexed_until
        return self._index.link(user_id, key, record.expires_at)

    def _take_back(self, key: str, value: bytes, before: Slot, *, quiet: bool = False) -> None:
        """Put *before* back under *key* if *key* still holds *value*, a move's write."""
        try:
            with self._errors():
                current, token = self._servers.for_key(key).gets(self._prefix + key)
            if current != value:
                return
            now = _clock.now()
            if before.value is not None and before.stored is not None and before.live(now):
                self.put(key, before.value, token, before.stored.record.expires_at, now)
            else:
                self.put(key, b"", token, _NEVER, now)
        except StoreError as exc:
            if not quiet:
                raise
            log.warning("session %s: a failed move's new record stays: %s", key[:8], exc)

    def _overwrite(self, key: str, value: bytes, expires_at: float, now: float) -> bool:
        """Write *value* under *key* whatever is there (delete it, for no value)."""
        name = self._prefix + key
        with self._errors():
            client = self._servers.for_key(key)
            if not value:
                client.delete(name, noreply=False)
                return True
            expire = self._servers.exptime(client, expires_at, now)
            return bool(client.set(name, value, expire=expire, noreply=False))

    def _unlink_previous(self, key: str, slot: Slot | None, record: Record) -> None:
        """Unlink *key* from the user its record had before *record*, if another."""
        previous = None if slot is None or slot.stored is None else slot.stored.record.user_id
        if previous is not None and previous != record.user_id:
            self._index.unlink(previous, [key])

    def _too_large(self, client: Any, key_size: int, size: int) -> str:
        """The message for a value the server refused as larger than its item limit."""
        try:
            limit: Any = client.stats("settings").get(b"item_size_max")
        except (MemcacheError, OSError, ValueError):
            limit = None
        shown = f"{int(limit):,} bytes" if limit is not None else "1 MB by default"
        return (
            f"{self._name}: a session record of {size:,} bytes (key {key_size} bytes) is "
            f"larger than the server's item limit (item_size_max, {shown}); keep sessions "
            "smaller (the max_size option), or start memcached with a larger -I"
        )

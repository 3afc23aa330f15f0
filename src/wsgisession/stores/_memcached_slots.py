"""What a memcached store reads of a key before it writes it: a :class:`Slot`, read
by a :class:`Reader`.

Private to :mod:`wsgisession.stores.memcached`. Every write of the store is a
compare-and-set on the cas token memcached gave the value it read (``gets``), or an
``add`` where nothing was there. A slot is that read: the value, its cas token, the
record it holds, and whether the key's save lock was taken, read in the same
multi-get, as the lock lives on the session's server.

:class:`Recent` keeps the slots that :meth:`~wsgisession.stores.memcached.MemcachedStore.load`
read last, so that the save or refresh of the same request writes on the token it
already has, one round trip instead of two. A token can only make a write fail,
never make a wrong one succeed: memcached gives every change of a value a new one,
and a save lock, once taken, changes the session's value's token too (see
:mod:`~wsgisession.stores._memcached_lock`). The slots are dropped when the server
fails, as a restarted server counts its tokens from the start again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from typing import Final, NamedTuple

from ._memcached_format import Stored, decode_record
from ._memcached_servers import Servers
from .base import Record

__all__ = ["EMPTY", "Reader", "Recent", "Slot", "slot_of"]

log = logging.getLogger("wsgisession")

# How many slots Recent keeps: more than the requests one process serves at once.
_RECENT: Final = 1024


class Slot(NamedTuple):
    """A key as read: its value and cas token (``None`` if nothing is there), the
    record the value holds (``None`` if none is readable), and whether the key's save
    lock was taken."""

    value: bytes | None
    token: bytes | None
    stored: Stored | None
    locked: bool

    def live(self, now: float) -> bool:
        """Whether the slot holds a record that has not expired by *now*."""
        return self.stored is not None and self.stored.record.expires_at > now

    def version(self, now: float) -> int | None:
        """The version of the live record held, or ``None`` if none is."""
        return self.stored.record.version if self.stored and self.live(now) else None


#: A key that holds nothing, unlocked.
EMPTY: Final = Slot(None, None, None, False)


def slot_of(key: str, found: tuple[bytes, bytes] | None, locked: bool) -> Slot:
    """The slot of *key* from a ``gets`` answer: ``(value, cas token)`` or ``None``.

    A value that is no record in this store's layout is logged and held as no record:
    a write replaces it. (:meth:`MemcachedStore.load` raises for it instead.)
    """
    if found is None:
        return Slot(None, None, None, locked)
    value, token = found
    try:
        stored: Stored | None = decode_record(value)
    except ValueError as exc:
        log.warning("session %s in memcached cannot be decoded (%s); ignored", key[:8], exc)
        stored = None
    return Slot(value, token, stored, locked)


class Recent:
    """The last slots read by loads, by key, at most a thousand or so; thread-safe."""

    __slots__ = ("_lock", "_slots")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: OrderedDict[str, Slot] = OrderedDict()

    def put(self, key: str, slot: Slot) -> None:
        """Keep *slot* as *key*'s latest, forgetting the oldest past the bound."""
        with self._lock:
            self._slots[key] = slot
            self._slots.move_to_end(key)
            if len(self._slots) > _RECENT:
                self._slots.popitem(last=False)

    def take(self, key: str) -> Slot | None:
        """Remove and return *key*'s slot: a token serves one write at most."""
        with self._lock:
            return self._slots.pop(key, None)

    def clear(self) -> None:
        """Forget every slot."""
        with self._lock:
            self._slots.clear()


class Reader:
    """Reads a store's sessions by key: as slots, with their save locks, or as records.

    :param servers: The store's servers.
    :param prefix: The store's key prefix.
    :param errors: Translates the driver's errors into :exc:`~wsgisession.StoreError`.
    """

    __slots__ = ("_errors", "_servers", "prefix")

    def __init__(
        self, servers: Servers, prefix: str, errors: Callable[[], AbstractContextManager[None]]
    ) -> None:
        self._servers = servers
        self._errors = errors
        #: The store's key prefix.
        self.prefix = prefix

    def lock_name(self, key: str) -> str:
        """The key of the save lock of the session under *key*."""
        return f"{self.prefix}l:{key}"

    def slots(self, keys: Collection[str]) -> dict[str, Slot]:
        """Read *keys* and their save locks: one ``gets`` per server."""
        names = [(self.prefix + k, k) for k in keys] + [(self.lock_name(k), k) for k in keys]
        found: dict[str, tuple[bytes, bytes]] = {}
        with self._errors():
            for client, group in self._servers.group(names):
                found.update(self._servers.sender(client).gets_many(group))
        return {
            k: slot_of(k, found.get(self.prefix + k), self.lock_name(k) in found) for k in keys
        }

    def records(self, keys: Collection[str]) -> dict[str, Record | None]:
        """Read the records under *keys*, expired or not (``None`` where there is none
        or none readable): one ``get`` per server."""
        names = [(self.prefix + k, k) for k in keys]
        found: dict[str, bytes] = {}
        with self._errors():
            for client, group in self._servers.group(names):
                found.update(client.get_many(group))
        records: dict[str, Record | None] = {}
        for key in keys:
            value = found.get(self.prefix + key)
            stored = None if value is None else slot_of(key, (value, b""), False).stored
            records[key] = None if stored is None else stored.record
        return records

"""The memcached store: each session one memcached value, dropped by memcached's expiry.

Works with one server or several (``memcached://h1:11211,h2:11211``), through
pymemcache. Every write is a compare-and-set on the cas token of the value it read,
or an ``add`` for a new key, so concurrent requests merge by key as on every store.
The values' layout is in :mod:`~wsgisession.stores._memcached_format`; reading a key
before writing it, in :mod:`~wsgisession.stores._memcached_slots`; the writes and the
order of their steps, in :mod:`~wsgisession.stores._memcached_writes`; the servers,
the URL and expiry times, in :mod:`~wsgisession.stores._memcached_servers`; the user
index, in :mod:`~wsgisession.stores._memcached_index`; the save lock, in
:mod:`~wsgisession.stores._memcached_lock`; the request path's commands on connections
kept per thread, in :mod:`~wsgisession.stores._memcached_direct`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import Any, ClassVar, Final, Self

from pymemcache.client.base import Client, PooledClient
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheError

from .. import _clock
from ..errors import ConfigError, StoreError
from ._memcached_format import decode_record, encode_record
from ._memcached_index import UserIndex
from ._memcached_lock import SaveLock
from ._memcached_servers import Servers, check_prefix, describe, plan_servers
from ._memcached_slots import Reader, Recent, Slot, slot_of
from ._memcached_writes import Writes
from .base import CorruptRecord, LockTimeout, Record, Store, mask_url, translate_errors

__all__ = ["MemcachedStore"]

log = logging.getLogger("wsgisession")

_ERRORS: Final = (MemcacheError, OSError)
# How long a refresh keeps trying while concurrent writes change the record.
_REFRESH_PATIENCE: Final = 10.0


class MemcachedStore(Store):
    """Keep sessions in memcached: one value per session under ``<key_prefix><key>``.

    The value is a fixed header (format, version, the times, lengths), then the user
    id, the meta and the data; anything else under a session's key makes :meth:`load`
    raise :exc:`~wsgisession.stores.base.CorruptRecord`, and every other operation
    treats it as no record, which a save replaces. Memcached drops a record by itself
    when it expires, so :meth:`cleanup` has nothing to do and :meth:`count` can't tell
    (memcached can't list its keys); :meth:`load` still checks ``expires_at`` against
    the application's clock. Memcached may also evict a live session when it runs out
    of memory, and loses them all when it restarts: such a session reads as gone,
    never as an error.

    A save compares the stored version and writes with ``cas`` on the token of the
    value it read, or ``add`` for a new session; :meth:`load` keeps its token, so the
    save that follows a load is one round trip. Memcached can't change two keys in
    one step, so a save that *replaces* another key (a regenerate) writes the new
    record first, then overwrites the old one (with the tombstone, or with nothing)
    by compare-and-set on the token it read: if the old record changed meanwhile (a
    concurrent write, a logout), the new record is taken back and the save returns
    ``False``, so that no write is lost and no logout undone. For that moment both
    keys hold the session; only this request knows the new one.

    :meth:`save_locked` takes a lock key beside the session's with ``add``, holding a
    random token for a lease of a few seconds, then changes the session's cas token
    (an empty ``append``), so that a save that read it before cannot land; others
    poll for the lock, and a plain :meth:`save` fails while it is taken. Each user's
    sessions are listed in one value per user, changed by compare-and-set and checked
    against the sessions when read (see :mod:`~wsgisession.stores._memcached_index`).

    :param client: A pymemcache ``PooledClient`` (or ``Client``, which is one socket
        and not for threads) of one server, or a ``HashClient`` of several.
    :param key_prefix: Put before every key, to keep sessions apart from other data.
    :param name: What messages and ``repr()`` call the store, any password masked;
        by default a ``memcached://`` URL of the client's servers.
    :raises ConfigError: *client* is none of those, or *key_prefix* can't start a
        memcached key.
    """

    native_expiry: ClassVar[bool] = True

    def __init__(
        self, client: Any, *, key_prefix: str = "session:", name: str | None = None
    ) -> None:
        if not isinstance(client, Client | PooledClient | HashClient):
            raise ConfigError(
                "MemcachedStore needs a pymemcache Client, PooledClient or HashClient, "
                f"got {type(client).__name__}"
            )
        # Masked once here, as the name goes into repr() and every message.
        self._name = mask_url(name) if name is not None else describe(client)
        check_prefix(key_prefix, self._name)
        self.key_prefix = key_prefix
        self._servers = Servers(client)
        self._recent = Recent()
        self._errors = _Boundary(self._name, self._recent, self._servers)
        self._reader = Reader(self._servers, key_prefix, self._errors)
        self._index = UserIndex(self._servers, key_prefix, self._errors, self._reader.records)
        self._writes = Writes(self._servers, self._reader, self._index, self._errors, self._name)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from ``memcached://host[:port][,host[:port]…]``, contacting nothing.

        The port defaults to 11211; an IPv6 address goes in brackets.

        :param url: The store URL.
        :param options: ``key_prefix``; ``connect_timeout`` and ``timeout`` (seconds,
            default 5); ``max_pool_size`` (connections per server, default no bound)
            and ``pool_idle_timeout`` (seconds before an idle connection is closed,
            default 0: never); ``no_delay`` (``TCP_NODELAY``, default true).
        :raises ConfigError: The URL is malformed or an option unknown or wrong.
        """
        plan = plan_servers(url, options)
        store = cls(plan.connect(), key_prefix=plan.key_prefix, name=url)
        if plan.hold:
            store._servers.hold()
        return store

    @property
    def client(self) -> Any:
        """The pymemcache client the store drives."""
        return self._servers.client

    def load(self, key: str) -> Record | None:
        """Return the live record under *key*, or ``None``: one ``gets`` of the record
        and its save lock.

        :raises CorruptRecord: The value is no record in this store's layout.
        """
        name, lock = self.key_prefix + key, self._reader.lock_name(key)
        with self._errors():
            servers = self._servers
            found = servers.sender(servers.for_key(key)).gets_many([name, lock])
        got = found.get(name)
        if got is None:
            self._recent.take(key)
            return None
        try:
            stored = decode_record(got[0])
        except ValueError as exc:
            raise CorruptRecord(f"the memcached value is no session record: {exc}") from None
        self._recent.put(key, Slot(got[0], got[1], stored, lock in found))
        record = stored.record
        return record if record.expires_at > _clock.now() else None

    def save(
        self,
        key: str,
        record: Record,
        *,
        expected_version: int | None,
        replaces: str | None = None,
        replaces_version: int | None = None,
        tombstone: Record | None = None,
    ) -> bool:
        """Compare the version and write with ``cas`` (``add`` for a new key).

        With *replaces*, the new record is written first, then the old one
        overwritten by compare-and-set (see the class); with *replaces_version*, the
        old record must be live and of that version, or nothing is written.
        """
        now = _clock.now()
        old = replaces if replaces != key else None
        if old is None:
            if expected_version is None:
                self._recent.take(key)
                return self._writes.create(key, record, None, now) is not None
            slot = self._usable(key, expected_version, now) or self._reader.slots([key])[key]
            return self._writes.update(key, record, expected_version, slot, now) is not None
        old_slot = self._usable(old, replaces_version, now)
        key_slot = None if expected_version is None else self._usable(key, expected_version, now)
        missing = [k for k, s in ((old, old_slot), (key, key_slot)) if s is None]
        if expected_version is None and key in missing:
            missing.remove(key)  # a new key: add() tells if it is taken
        read = self._reader.slots(missing) if missing else {}
        old_slot = old_slot or read[old]
        key_slot = key_slot or read.get(key)
        if old_slot.locked:
            return False
        if replaces_version is not None and old_slot.version(now) != replaces_version:
            return False
        moved = self._writes.move(
            key, record, expected_version, key_slot, old, old_slot, replaces_version, tombstone
        )
        return moved is True

    def save_locked(
        self,
        key: str,
        build: Callable[[Record], Record | None],
        *,
        timeout: float,
        moves_to: str | None = None,
        tombstone: Record | None = None,
    ) -> Record | None:
        """Write ``build(current)`` holding *key*'s save lock, polled for.

        An uncontended call takes five round trips: ``add`` the lock, an empty
        ``append`` to the session (a new cas token, so that no save that read it
        before lands), one ``gets`` of the session and the lock, the ``cas`` of the
        record, and the ``cas`` that lets go of the lock. A write that finds the
        record changed (a refresh, or a save that read it just before the lock was
        taken) reads it again and builds again. A holder whose lease ran out starts
        over.

        :raises LockTimeout: The lock was not this call's within *timeout* seconds.
        :raises StoreError: The server failed.
        """
        deadline = time.monotonic() + timeout
        target = moves_to if moves_to != key else None
        with self._errors():
            client = self._servers.for_key(key)
        self._recent.take(key)
        lock = SaveLock(client, self._reader.lock_name(key), self._errors)
        while True:
            if not lock.take(deadline):
                raise LockTimeout(f"{self._name}: session {key[:8]}… stayed locked {timeout:g} s")
            done, written = self._hold(lock, client, key, build, target, tombstone)
            if done:
                return written
            log.warning("session %s: a save lock's lease ran out before its write", key[:8])

    def refresh(
        self, key: str, expires_at: float, last_seen: float, *, version: int | None = None
    ) -> bool:
        """Move a live record's expiry and ``last_seen`` forward, never back.

        Memcached changes a value only whole, and the record holds its times, so a
        refresh that moves either rewrites the record by compare-and-set: one round
        trip after a :meth:`load` of it, two otherwise (a ``touch`` could move
        memcached's expiry alone, but not the ``expires_at`` a load returns).
        """
        deadline = time.monotonic() + _REFRESH_PATIENCE
        slot = self._recent.take(key)
        while True:
            now = _clock.now()
            if slot is None:
                slot = self._reader.slots([key])[key]
            stored = slot.stored
            if stored is None or not slot.live(now) or stored.record.version == 0:
                return False
            if version is not None and stored.record.version != version:
                return False
            current = stored.record
            later = max(current.expires_at, expires_at)
            seen = max(current.last_seen, last_seen)
            if later == current.expires_at and seen == current.last_seen:
                return True
            record = replace(current, expires_at=later, last_seen=seen)
            indexed = self._writes.link(key, record, stored, now)
            if self._writes.put(key, encode_record(record, indexed), slot.token, later, now):
                return True
            if time.monotonic() > deadline:
                raise StoreError(f"{self._name}: concurrent writes kept changing the session")
            slot = None

    def delete(self, key: str) -> bool:
        """Remove the record under *key*; ``True`` if a live one was there."""
        name = self.key_prefix + key
        self._recent.take(key)
        with self._errors():
            client = self._servers.for_key(key)
            value = client.get(name)
            if value is None:
                return False
            client.delete(name, noreply=False)
        stored = slot_of(key, (value, b""), False).stored
        if stored is None:
            return False
        if stored.record.user_id is not None:
            self._index.unlink(stored.record.user_id, [key])
        return stored.record.expires_at > _clock.now() and stored.record.version != 0

    def ping(self) -> None:
        """Ask every server its version.

        :raises StoreError: A server cannot be reached.
        """
        with self._errors():
            for client in self._servers.each():
                client.version()

    def cleanup(self, *, limit: int | None = None) -> int:
        """Return ``0``: memcached drops expired sessions by itself."""
        return 0

    def user_records(self, user_id: str) -> list[tuple[str, Record]]:
        """Return the user's live records: their index, then one ``get`` per server.

        Each entry is checked against the session it names; one whose session has
        ended is left out and dropped from the index.
        """
        return self._index.records(user_id)

    def count(self) -> None:
        """Return ``None``: memcached can't list its keys, so the store can't count."""
        return None

    def close(self) -> None:
        """Close the client's connections; safe to repeat."""
        with self._errors():
            self._servers.close()

    def __repr__(self) -> str:
        return f"<MemcachedStore {self._name}>"

    def _hold(
        self,
        lock: SaveLock,
        client: Any,
        key: str,
        build: Callable[[Record], Record | None],
        target: str | None,
        tombstone: Record | None,
    ) -> tuple[bool, Record | None]:
        """Build and write as the lock's holder, and let the lock go.

        Return ``(True, what save_locked returns)``, or ``(False, None)`` if the
        lease ran out first and the caller must start over.
        """
        name = self.key_prefix + key
        lock_cas: bytes | None = None
        held = True
        try:
            with self._errors():
                client.append(name, b"", noreply=False)
            while True:
                with self._errors():
                    found = client.gets_many([name, lock.name])
                lock_value, lock_cas = found.get(lock.name, (None, None))
                if not lock.held(lock_value):
                    held = False
                    return False, None
                now = _clock.now()
                slot = slot_of(key, found.get(name), False)
                if slot.stored is None or not slot.live(now):
                    return True, None
                record = build(slot.stored.record)
                if record is None:
                    return True, None
                if target is None:
                    version = slot.stored.record.version
                    if self._writes.update(key, record, version, slot, _clock.now()) is not None:
                        return True, record
                    continue
                moved = self._writes.move(
                    target, record, None, None, key, slot, slot.stored.record.version, tombstone
                )
                if moved is False:
                    log.warning("session %s: the key a locked save moves to is taken", key[:8])
                    return True, None
                if moved:
                    return True, record
        finally:
            if held:
                # Quietly: what failed (build's exception, say) goes out unchanged, and a
                # write that landed must not be reported as failed. A lock left behind
                # runs out with its lease.
                lock.release(lock_cas, quiet=True)

    def _usable(self, key: str, version: int | None, now: float) -> Slot | None:
        """The slot a load kept for *key*, if it shows *version* live and unlocked."""
        slot = self._recent.take(key)
        if slot is None or slot.locked or version is None or slot.version(now) != version:
            return None
        return slot


class _Boundary:
    """Where one store's driver errors become :exc:`~wsgisession.StoreError`.

    A failure also forgets what a restarted server makes stale: the cas tokens of
    recent loads (a new server counts them from the start again) and the servers'
    clocks. Called, it returns the context manager that translates.
    """

    __slots__ = ("_name", "_recent", "_servers")

    def __init__(self, name: str, recent: Recent, servers: Servers) -> None:
        self._name = name
        self._recent = recent
        self._servers = servers

    def __call__(self) -> _Translate:
        return _Translate(self._name, self._forget)

    def _forget(self) -> None:
        self._recent.clear()
        self._servers.forget_clocks()


class _Translate(translate_errors):
    """:class:`translate_errors` for memcached's errors, calling *failed* on one first."""

    __slots__ = ("_on_failure",)

    def __init__(self, what: str, failed: Callable[[], None]) -> None:
        super().__init__(what, *_ERRORS)
        self._on_failure = failed

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, _ERRORS):
            self._on_failure()
        super().__exit__(exc_type, exc, traceback)

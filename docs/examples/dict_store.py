"""A complete store of one's own: the example of the guide to writing a store.

It keeps records in a dict of this process, as ``MemoryStore`` does, so that every
line is about the contract rather than a backend. A real store does the same steps
against its backend, inside ``translate_errors`` so that the backend's exceptions
reach the application as ``StoreError``: ``sqlite3_store.py`` beside it is one.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, Self

from wsgisession.errors import ConfigError
from wsgisession.stores import LockTimeout, Record, Store


class DictStore(Store):
    """Sessions in a dict of this process, served for ``dict://`` URLs."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build the store from ``dict://``; it takes no options."""
        if url != "dict://":
            raise ConfigError(f"store {url!r} is not a dict store URL: use 'dict://'")
        if options:
            raise ConfigError(f"unknown store option {next(iter(options))!r} for dict://")
        return cls()

    def _live(self, key: str) -> Record | None:
        # Expiry is judged by the application's clock: a record past its expires_at
        # is never returned, even before cleanup() has removed it.
        record = self._records.get(key)
        if record is None or record.expires_at <= time.time():
            return None
        return record

    def load(self, key: str) -> Record | None:
        with self._lock:
            return self._live(key)

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
        with self._lock:
            current = self._live(key)
            if expected_version is None:
                if current is not None:
                    return False
            elif current is None or current.version != expected_version:
                return False
            if replaces is not None and replaces != key and replaces_version is not None:
                # A regenerate: the old record must still be the version it merged onto.
                old = self._live(replaces)
                if old is None or old.version != replaces_version:
                    return False
            self._write(key, record, replaces, tombstone)
            return True

    def save_locked(
        self,
        key: str,
        build: Callable[[Record], Record | None],
        *,
        timeout: float,
        moves_to: str | None = None,
        tombstone: Record | None = None,
    ) -> Record | None:
        # Holding the store's one lock across the read, the build and the write keeps
        # every other save out. A real backend locks just this session, and queues the
        # waiters first come, first served.
        if not self._lock.acquire(timeout=timeout):
            raise LockTimeout(f"dict store: session {key[:8]}… stayed locked {timeout:g} s")
        try:
            current = self._live(key)
            if current is None:
                return None
            record = build(current)
            if record is None:
                return None
            if moves_to is None:
                self._write(key, record, None, None)
            elif self._live(moves_to) is not None:
                return None  # a move is a create: another session lives there
            else:
                self._write(moves_to, record, key, tombstone)
            return record
        finally:
            self._lock.release()

    def _write(
        self, key: str, record: Record, replaces: str | None, tombstone: Record | None
    ) -> None:
        self._records[key] = record
        if replaces is not None and replaces != key:
            if tombstone is None:
                self._records.pop(replaces, None)
            else:
                self._records[replaces] = tombstone

    def refresh(
        self, key: str, expires_at: float, last_seen: float, *, version: int | None = None
    ) -> bool:
        with self._lock:
            current = self._live(key)
            if current is None or current.version == 0:  # nothing, or a tombstone
                return False
            if version is not None and current.version != version:  # saved since
                return False
            self._records[key] = dataclasses.replace(
                current,
                expires_at=max(current.expires_at, expires_at),
                last_seen=max(current.last_seen, last_seen),
            )
            return True

    def delete(self, key: str) -> bool:
        with self._lock:
            current = self._live(key)
            self._records.pop(key, None)
            return current is not None and current.version != 0

    def ping(self) -> None:
        """Nothing to reach: the dict is always there."""

    def cleanup(self, *, limit: int | None = None) -> int:
        with self._lock:
            now = time.time()
            expired = [key for key, r in self._records.items() if r.expires_at <= now]
            for key in expired[:limit]:
                del self._records[key]
            return len(expired[:limit])

    def user_records(self, user_id: str) -> list[tuple[str, Record]]:
        # A scan is this store's user index; a real backend keeps an index instead.
        with self._lock:
            found = ((key, self._live(key)) for key in list(self._records))
            return [(key, r) for key, r in found if r is not None and r.user_id == user_id]

    def count(self) -> int:
        with self._lock:
            live = (self._live(key) for key in list(self._records))
            return sum(1 for record in live if record is not None and record.version != 0)

"""A store that keeps records in a dict of the current process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace as _replace
from typing import Any, Self

from .. import _clock
from ..errors import ConfigError
from ._turns import Turns
from .base import LockTimeout, Record, Store

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Keep sessions in this process's memory, guarded by a lock.

    Sessions are lost when the process ends and are not shared between worker
    processes, so this store is for tests, development and single-process servers.
    Expired records are never served and are dropped by :meth:`cleanup`.
    """

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        # user id -> keys of that user's records; entries leave with their record.
        self._users: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        # Keys whose save lock a save_locked holds; plain saves of them fail meanwhile.
        self._held: set[str] = set()
        self._turns = Turns()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from ``memory://``; it takes no options."""
        if url.rstrip("/").lower() != "memory:":
            raise ConfigError(f"store {url!r}: the memory store takes no path; use 'memory://'")
        if options:
            raise ConfigError(
                f"store 'memory://' takes no store options, got {', '.join(sorted(options))}"
            )
        return cls()

    def load(self, key: str) -> Record | None:
        """Return the live record under *key*, or ``None``."""
        return self._live(key)

    def _live(self, key: str) -> Record | None:
        record = self._records.get(key)
        if record is None or record.expires_at <= _clock.now():
            return None
        return record

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
        """Compare the stored versions (and *replaces_version*) and write, under the lock."""
        old = None if replaces == key else replaces
        with self._lock:
            if key in self._held or old in self._held:
                return False
            current = self._live(key)
            stored_version = None if current is None else current.version
            if stored_version != expected_version:
                return False
            if old is not None and replaces_version is not None:
                replaced = self._live(old)
                if replaced is None or replaced.version != replaces_version:
                    return False
            self._write(key, record, old, tombstone)
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
        """Write ``build(current)`` with *key* reserved; threads wait in arrival order."""
        with self._turns.hold(key, timeout) as taken:
            if not taken:
                raise LockTimeout(f"memory store: session {key[:8]}… stayed locked {timeout:g} s")
            with self._lock:
                current = self._live(key)
                if current is None:
                    return None
                self._held.add(key)
            try:
                # Built outside the store's lock, so other sessions' saves go on meanwhile.
                record = build(current)
                with self._lock:
                    now_there = self._live(key)
                    # A delete landing during build leaves nothing to write onto.
                    if record is None or now_there is None or now_there.version != current.version:
                        return None
                    if moves_to is None or moves_to == key:
                        self._write(key, record, None, None)
                    elif self._live(moves_to) is not None:
                        return None  # a move is a create: another session lives there
                    else:
                        self._write(moves_to, record, key, tombstone)
                    return record
            finally:
                with self._lock:
                    self._held.discard(key)

    def _write(self, key: str, record: Record, old: str | None, tombstone: Record | None) -> None:
        # Called under the lock, once every condition of the write has been checked.
        self._unlink(key)
        self._records[key] = record
        if record.user_id is not None:
            self._users.setdefault(record.user_id, set()).add(key)
        if old is not None:
            self._unlink(old)
            if tombstone is None:
                self._records.pop(old, None)
            else:
                self._records[old] = tombstone

    def refresh(
        self, key: str, expires_at: float, last_seen: float, *, version: int | None = None
    ) -> bool:
        """Move the expiry and ``last_seen`` of a live record forward, never back."""
        with self._lock:
            current = self._live(key)
            if current is None or current.version == 0:
                return False
            if version is not None and current.version != version:
                return False
            if expires_at > current.expires_at or last_seen > current.last_seen:
                self._records[key] = _replace(
                    current,
                    expires_at=max(expires_at, current.expires_at),
                    last_seen=max(last_seen, current.last_seen),
                )
            return True

    def delete(self, key: str) -> bool:
        """Remove the record under *key*; ``True`` if a live one was there."""
        with self._lock:
            current = self._live(key)
            self._unlink(key)
            self._records.pop(key, None)
            return current is not None and current.version != 0

    def ping(self) -> None:
        """Do nothing: memory is always reachable."""

    def cleanup(self, *, limit: int | None = None) -> int:
        """Drop expired records, at most *limit*, and return how many."""
        now = _clock.now()
        with self._lock:
            expired = [k for k, r in self._records.items() if r.expires_at <= now]
            if limit is not None:
                expired = expired[:limit]
            for key in expired:
                self._unlink(key)
                del self._records[key]
        return len(expired)

    def user_records(self, user_id: str) -> list[tuple[str, Record]]:
        """Return the user's live records."""
        with self._lock:
            keys = list(self._users.get(user_id, ()))
            found = [(key, record) for key in keys if (record := self._live(key)) is not None]
        return found

    def _unlink(self, key: str) -> None:
        # Called under the lock, before the record under *key* is replaced or dropped.
        record = self._records.get(key)
        if record is None or record.user_id is None:
            return
        keys = self._users.get(record.user_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._users[record.user_id]

    def count(self) -> int:
        """Return the number of live records, tombstones aside."""
        now = _clock.now()
        return sum(1 for r in list(self._records.values()) if r.expires_at > now and r.version)

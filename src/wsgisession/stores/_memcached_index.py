"""The memcached store's user index: which sessions belong to which user.

Private to :mod:`wsgisession.stores.memcached`. Memcached has no sets and can't list
its keys, so each user has one value, under ``<prefix>u:`` and the SHA-256 of the
user id, listing the keys of the user's sessions, each with the expiry its session
had when the index last looked at it and when it was linked (see
:mod:`~wsgisession.stores._memcached_format`). The value holds the user id itself,
checked on every read, so a hash collision can't mix two users up. Every change is a
compare-and-set (``gets``, then ``cas``, or ``add`` for a user's first session),
tried again after a short, jittered pause when another change got there first.

No step changes a session and its index together, so the order is what keeps the
index right. A session is linked *before* it is written (a failure in between leaves
an entry whose session is missing or still another user's, never a session missing
from its user's list), and unlinked *after* it is deleted or given to another user;
entries are checked against the sessions when read, so a stale entry is never
listed. Stale entries are dropped when :meth:`UserIndex.records` reads them, and
when a link rewrites the index: those whose recorded expiry passed (after reading
their sessions, as a save may have moved the expiry since), and, once the index
passes :data:`COMPACT_AT` entries, every entry whose session has ended. An entry
linked less than :data:`GRACE` seconds ago is kept even if its session is missing
or another user's: that session may be about to be written for this user.

The index value expires at its ``until``, which only ever moves later: at least the
latest expiry of its entries, with room to spare (up to 30 days), so that a session
whose saves move its expiry forward need not relink on every save. A link returns
that ``until``; the store keeps it in the session's value, and a later save of the
same session for the same user links again only once its expiry passes it.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from typing import Any, Final

from .. import _clock
from ..errors import StoreError
from ._memcached_format import Entry, Index, decode_index, encode_index
from ._memcached_servers import MAX_RELATIVE, Servers
from .base import Record

__all__ = ["COMPACT_AT", "GRACE", "MAX_ENTRIES", "Read", "UserIndex"]

log = logging.getLogger("wsgisession")

#: Reads the sessions under the keys given: each key's record, expired or not, or
#: ``None`` when nothing readable is there.
Read = Callable[[Collection[str]], dict[str, Record | None]]

#: Past this many entries, a link checks every entry's session and drops the ended.
COMPACT_AT: Final = 64
#: The most live sessions one user's index lists; a link past it is refused.
MAX_ENTRIES: Final = 10_000
#: Seconds an entry is kept though its session is missing: it may be being written.
GRACE: Final = 60.0
# How long a change keeps trying while other changes of the same index win.
_PATIENCE: Final = 10.0
_FIRST_PAUSE: Final = 0.0005
_LONGEST_PAUSE: Final = 0.02


class UserIndex:
    """The user index of one memcached store.

    :param servers: The store's servers.
    :param prefix: The store's key prefix.
    :param errors: Translates the driver's errors into :exc:`~wsgisession.StoreError`.
    :param read: Reads sessions by key, for checking entries against them.
    """

    __slots__ = ("_errors", "_prefix", "_read", "_servers")

    def __init__(
        self,
        servers: Servers,
        prefix: str,
        errors: Callable[[], AbstractContextManager[None]],
        read: Read,
    ) -> None:
        self._servers = servers
        self._prefix = prefix
        self._errors = errors
        self._read = read

    def name(self, user_id: str) -> str:
        """The key of *user_id*'s index: the SHA-256 of its UTF-8 after ``<prefix>u:``."""
        return f"{self._prefix}u:{hashlib.sha256(user_id.encode()).hexdigest()}"

    def link(self, user_id: str, key: str, expires_at: float) -> float:
        """List the session *key*, expiring at *expires_at*, under *user_id*.

        Return the index's ``until``: it lists the session at least till then.

        :raises StoreError: The server failed, the user has :data:`MAX_ENTRIES` live
            sessions already, or other changes of the index kept winning.
        """

        def change(index: Index, now: float) -> Index | None:
            entries = dict(index.entries)
            entries[key] = Entry(max(expires_at, entries.get(key, Entry(0.0, 0.0))[0]), now)
            entries = self._tidy(user_id, entries, now, keep=key)
            if len(entries) > MAX_ENTRIES:
                raise StoreError(
                    f"user index: the user has {MAX_ENTRIES:,} live sessions in memcached "
                    "already; end some before starting another"
                )
            latest = max(entry.expires_at for entry in entries.values())
            room = min(max(expires_at - now, 0.0), MAX_RELATIVE)
            return Index(user_id, max(index.until, latest, expires_at + room), entries)

        written = self._change(user_id, change)
        assert written is not None
        return written.until

    def unlink(self, user_id: str, keys: Collection[str]) -> None:
        """Drop *keys* from *user_id*'s index, if listed.

        A failure is logged, not raised: the entries are dropped when next read.
        """

        def change(index: Index, now: float) -> Index | None:
            if not any(key in index.entries for key in keys):
                return None
            entries = {k: e for k, e in index.entries.items() if k not in keys}
            return Index(user_id, index.until, entries)

        try:
            self._change(user_id, change)
        except StoreError as exc:
            log.warning("could not unlink sessions from a user's index in memcached: %s", exc)

    def records(self, user_id: str) -> list[tuple[str, Record]]:
        """Return the live records of *user_id*'s sessions; drop entries gone stale."""
        name = self.name(user_id)
        client = self._servers.for_key(name)
        with self._errors():
            value, token = client.gets(name)
        index = self._decode(user_id, value)
        if index is None or not index.entries:
            return []
        now = _clock.now()
        records = self._read(list(index.entries))
        found: list[tuple[str, Record]] = []
        stale: set[str] = set()
        for key, entry in index.entries.items():
            record = records.get(key)
            if _belongs(record, user_id, now):
                assert record is not None
                found.append((key, record))
            elif _ended(entry, now):
                stale.add(key)
        if stale:
            pruned = {k: e for k, e in index.entries.items() if k not in stale}
            self._put(client, name, Index(user_id, index.until, pruned), token, now, quiet=True)
        return found

    # -- helpers -------------------------------------------------------------------

    def _tidy(
        self, user_id: str, entries: dict[str, Entry], now: float, keep: str
    ) -> dict[str, Entry]:
        """Check the entries that may have ended against their sessions; keep the rest.

        Those whose recorded expiry passed are read (a save may have moved it), and
        past :data:`COMPACT_AT` entries every one is.
        """
        if len(entries) > COMPACT_AT:
            doubtful = [k for k in entries if k != keep]
        else:
            doubtful = [k for k, e in entries.items() if k != keep and e.expires_at <= now]
        if not doubtful:
            return entries
        records = self._read(doubtful)
        tidy = dict(entries)
        for key in doubtful:
            record = records.get(key)
            if _belongs(record, user_id, now):
                assert record is not None
                tidy[key] = Entry(record.expires_at, entries[key].linked_at)
            elif _ended(entries[key], now):
                del tidy[key]
        return tidy

    def _change(
        self, user_id: str, change: Callable[[Index, float], Index | None]
    ) -> Index | None:
        """Apply *change* to the index by compare-and-set until it lands; return what
        was written, or ``None`` if *change* wanted nothing written."""
        name = self.name(user_id)
        client = self._servers.for_key(name)
        deadline = time.monotonic() + _PATIENCE
        pause = _FIRST_PAUSE
        while True:
            with self._errors():
                value, token = client.gets(name)
            index = self._decode(user_id, value) or Index(user_id, 0.0, {})
            now = _clock.now()
            changed = change(index, now)
            if changed is None:
                return None
            if self._put(client, name, changed, token if value is not None else None, now):
                return changed
            if time.monotonic() > deadline:
                raise StoreError(f"user index: other writers kept changing it for {_PATIENCE:g} s")
            time.sleep(random.uniform(0, pause))
            pause = min(pause * 2, _LONGEST_PAUSE)

    def _put(
        self,
        client: Any,
        name: str,
        index: Index,
        token: bytes | None,
        now: float,
        *,
        quiet: bool = False,
    ) -> bool:
        """Write *index* in place of the value whose cas token is *token* (``add`` if
        none); ``False`` if another writer got there first."""
        expire = self._servers.exptime(client, index.until, now) if index.entries else -1
        value = encode_index(index)
        try:
            with self._errors():
                if token is None:
                    return bool(client.add(name, value, expire=expire, noreply=False))
                return bool(client.cas(name, value, token, expire=expire, noreply=False))
        except StoreError as exc:
            if not quiet:
                raise
            log.warning("could not prune a user's index in memcached: %s", exc)
            return False

    def _decode(self, user_id: str, value: bytes | None) -> Index | None:
        if value is None:
            return None
        try:
            index = decode_index(value)
        except ValueError as exc:
            log.warning("a user's index in memcached cannot be decoded (%s); rebuilt", exc)
            return None
        if index.user_id != user_id:
            log.warning("a user's index in memcached names another user; rebuilt")
            return None
        return index


def _belongs(record: Record | None, user_id: str, now: float) -> bool:
    """Whether *record* is a live session of *user_id*."""
    return record is not None and record.expires_at > now and record.user_id == user_id


def _ended(entry: Entry, now: float) -> bool:
    """Whether an entry whose session is not a live one of its user can be dropped.

    Not within :data:`GRACE` of its linking: the session (new, or another user's
    until now) may be about to be written for this user.
    """
    return entry.linked_at <= now - GRACE

"""A store that keeps one file per session in sharded sub-directories.

The store decides what is written when, and under which locks. The rest is in private
modules, one idea each: ``_file_format`` (the bytes of a record file), ``_file_tree``
(the directory: shards, ownership checks, safe opens, atomic writes), ``_file_locks``
(the shard locks and the purge lease) and ``_file_users`` (the per-user index files).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Final, Self

from .. import _clock
from ..errors import ConfigError
from ._file_errors import FileErrors
from ._file_format import (
    HEAD_SIZE,
    UNREADABLE,
    Header,
    decode_record,
    encode_record,
    header,
    slot,
    spare_slot,
)
from ._file_locks import ShardLocks, claim_purge_lease
from ._file_tree import KEY, TEMP_PREFIX, Tree
from ._file_users import UserIndex
from ._turns import Turns
from .base import CorruptRecord, LockTimeout, Record, Store, mask_url

__all__ = ["FileStore"]

log = logging.getLogger("wsgisession")

_OPTIONS: Final = ("file_mode", "fsync", "shard_depth")
#: The bits ``file_mode`` may hold beyond the owner's read and write: the group's.
_GROUP_BITS: Final = 0o060
#: Seconds after which :meth:`FileStore.cleanup` takes a temp file for a crashed
#: writer's leftover; no live write takes this long.
_TEMP_MAX_AGE: Final = 3600.0
#: How long a plain save waits for a shard lock before it returns ``False``.
_PLAIN_SAVE_WAIT: Final = 2.0

#: What is under a key, as read under its lock: the key, whether a file is there,
#: and its record (``None`` if missing or unreadable), expired or not.
_Found = tuple[str, bool, Record | None]


class _Lost(Exception):
    """A write under the lock lost its file name to a lock-free create."""


class FileStore(Store):
    """Keep each session in its own file under *directory*.

    Files are spread over ``shard_depth`` levels of sub-directories named by the
    key's leading hex digits, so no directory grows too large. A write goes to a
    temp file that replaces the record in one ``os.replace``, so a crash leaves the
    old record or the new one, never half of each; readers take no lock. Writers
    take an ``fcntl.flock`` on a lock file per shard directory, which serializes
    threads and processes alike, so several workers can share the directory on one
    machine (not over NFS, where ``flock`` is unreliable). A new record without a
    user is put in place with ``os.link``, which fails if the name is taken, so
    creating one takes no lock and reads nothing.

    :meth:`save_locked` holds the same shard locks across its read, *build* and
    write, so a plain save of the session waits for it, for
    :data:`_PLAIN_SAVE_WAIT` seconds at most: then it returns ``False``, and its
    caller takes its turn in :meth:`save_locked`. This process's threads
    queue for a session's lock in the order they asked; between processes, the
    kernel's ``flock`` decides.

    A tombstone is an ordinary record file of version 0, written in place of the
    record it replaces.

    A refresh rewrites no record: it writes the new expiry and ``last_seen`` into
    one of two small checksummed slots at the start of the file, the one not
    holding the latest times, so a reader or a crash that meets the write half
    done falls back on the other slot, and at worst loses that refresh.

    The user index is a file per user under ``users/`` (see
    :mod:`~wsgisession.stores._file_users`), changed under its own lock while the
    records' locks are held, so it changes in the same step as the records.

    The store owns its directory. It makes what is missing, the directory's parents
    included, with mode ``0o700`` (``0o750`` or ``0o770`` when *file_mode* lets the
    group read or write) and files with *file_mode*. On first use it refuses, with
    :exc:`~wsgisession.StoreError`, a directory that another user owns or that others
    can write (the group too, unless *file_mode* lets it write the records anyway).
    Inside, it follows no symbolic link: a link, or another user's directory, in a
    shard's place is refused, a link or anything but a regular file of the store's
    user at a lock file's or the purge lease's path too, and at a record's path it
    reads as a corrupt record, without blocking on a FIFO. See
    :class:`~wsgisession.stores._file_tree.Tree`.

    :meth:`load` raises :exc:`~wsgisession.stores.CorruptRecord` for a file that holds
    no record it can read; elsewhere such a file counts as missing and is logged. Keys
    must be 64 lowercase hex digits, as :func:`wsgisession.ids.store_key` makes them;
    any other key raises :exc:`ValueError`, a programming error, so that no key can
    name a file outside *directory*. Messages and log lines name a file by its first 8
    hex digits at most.

    :param directory: Where the records live; a relative path is resolved against
        the current directory now. It is created by the first write or :meth:`ping`.
    :param shard_depth: Levels of two-hex-digit sub-directories, from 0 to 4.
    :param fsync: Flush every write and its directory to disk, so a power loss
        keeps it too. Slower.
    :param file_mode: Permission bits of the record files: ``0o600``, plus read or
        write for the group (``0o640``, ``0o660``); directories get the matching
        search bits.
    :raises ConfigError: An option has the wrong type or is out of range.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        shard_depth: int = 2,
        fsync: bool = False,
        file_mode: int = 0o600,
    ) -> None:
        if type(shard_depth) is not int or not 0 <= shard_depth <= 4:
            raise ConfigError(
                f"store option 'shard_depth' must be an integer from 0 to 4, got {shard_depth!r}"
            )
        if type(fsync) is not bool:
            raise ConfigError(f"store option 'fsync' must be true or false, got {fsync!r}")
        if type(file_mode) is not int or file_mode & ~_GROUP_BITS != 0o600:
            shown = f"{file_mode:#o}" if type(file_mode) is int else repr(file_mode)
            raise ConfigError(
                "store option 'file_mode' must be 0o600, 0o640 or 0o660: read and write "
                f"for the owner, at most read and write for the group, nothing for others; "
                f"got {shown}"
            )
        path = os.fspath(directory)
        if "\0" in path:
            raise ConfigError(f"the file store's directory {path!r} holds a NUL character")
        self.directory: Final = os.path.abspath(path)
        self.shard_depth: Final = shard_depth
        self.fsync: Final = fsync
        self.file_mode: Final = file_mode
        self._tree = Tree(
            self.directory, shard_depth=shard_depth, fsync=fsync, file_mode=file_mode
        )
        self._locks = ShardLocks(self._tree)
        self._users = UserIndex(self._tree, self._locks, self._record)
        self._what = f"file store {self.directory}"
        # One for every call: it keeps no state between a block's entry and exit.
        self._errors: Final = FileErrors(self._what)
        # Locked saves of this process queue here per key before taking the flock,
        # which would serve them in no particular order.
        self._turns = Turns()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from ``file:./dir``, ``file:/abs/dir`` or ``file:///abs/dir``.

        The ``file://`` form is a standard file URL (percent-decoded, host empty or
        ``localhost``); the others take the rest of the URL as a path, relative to
        the current directory unless it starts with ``/``.

        :raises ConfigError: The URL names no local directory or an option is unknown
            or invalid.
        """
        scheme, _, path = url.partition(":")
        if path.startswith("//"):
            host, slash, rest = path[2:].partition("/")
            if "?" in rest or "#" in rest:
                raise ConfigError(
                    f"store {mask_url(url)!r}: a file URL has no query or fragment; write "
                    "a '?' or '#' of the directory's name as %3F or %23"
                )
            if host not in ("", "localhost") or not slash:
                raise ConfigError(
                    f"store {mask_url(url)!r} must name a local directory, "
                    "such as 'file:///var/sessions'"
                )
            path = "/" + urllib.parse.unquote(rest)
        if scheme.lower() != "file" or not path:
            raise ConfigError(
                f"store {mask_url(url)!r} must name a directory, such as 'file:./sessions'"
            )
        for name in options:
            if name not in _OPTIONS:
                raise ConfigError(
                    f"unknown store option {name!r} for the file store; "
                    f"known: {', '.join(_OPTIONS)}"
                )
        return cls(path, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.directory!r})"

    def load(self, key: str) -> Record | None:
        """Return the live record under *key*, or ``None``; takes no lock.

        :raises CorruptRecord: The file under *key* holds no record this store can
            read (bad framing or checksum, truncated, an unknown format), or is no
            regular file of the store's user (a symbolic link, a FIFO, a directory).
        """
        shard = self._shard(key)
        with self._errors:
            if not self._tree.ready(create=False):
                return None
            blob = self._tree.read(shard, key)
        if blob is None:
            return None
        record = decode_record(blob)
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
        """Compare versions and write, under the lock of the key's shard.

        A plain create of a record without a user takes no lock: the record is
        linked into place only if no file has its name, and otherwise the create
        is judged under the lock like any save.

        With *replaces*, the old record's file is removed, or overwritten by
        *tombstone*, under its shard's lock too, after the new record is in place:
        a crash in between leaves both, and the old one expires, rather than
        neither. Its version is compared with *replaces_version*, if given, under
        that same lock, before anything is written. The user index changes under
        the users' locks, taken after those: the key is linked before the write and
        unlinked (from a previous user, and *replaces* from its user) after it.
        """
        old = None if replaces is None or replaces == key else replaces
        shard = self._shard(key)
        if old is not None:
            self._shard(old)  # a bad key fails before the directory is made
        with self._errors:
            self._tree.ready(create=True)
        if old is None and expected_version is None and record.user_id is None:
            with self._errors:
                if self._tree.create(shard, key, encode_record(record)):
                    return True
        keys = (key,) if old is None else (key, old)
        with self._errors, self._locked(*keys, timeout=_PLAIN_SAVE_WAIT) as taken:
            if not taken:
                # Held that long, by a process stopped while holding it, say: the caller
                # turns to save_locked on False, which waits in turn and for a bounded
                # time, where this save would have waited for ever.
                return False
            now = _clock.now()
            found, before = self._read_any(key)
            live = before is not None and before.expires_at > now
            if (before.version if before is not None and live else None) != expected_version:
                return False
            replaced: _Found | None = None
            if old is not None:
                replaced = (old, *self._read_any(old))
                gone = replaced[2]
                if replaces_version is not None and (
                    gone is None or gone.expires_at <= now or gone.version != replaces_version
                ):
                    return False
            return self._commit((key, found, before), record, replaced, tombstone)

    def save_locked(
        self,
        key: str,
        build: Callable[[Record], Record | None],
        *,
        timeout: float,
        moves_to: str | None = None,
        tombstone: Record | None = None,
    ) -> Record | None:
        """Write ``build(current)`` holding the shard locks across the read, build and write.

        The locks are those a plain save of the same keys takes, so a plain save
        waits while *build* runs. Threads of this process queue for *key* first
        come, first served; then the shard's ``flock`` decides among processes and
        plain saves. Both waits together last at most *timeout* seconds.

        :raises LockTimeout: The lock was not taken within *timeout* seconds.
        """
        new = None if moves_to is None or moves_to == key else moves_to
        keys = (key,) if new is None else (key, new)
        for name in keys:
            self._shard(name)  # a bad key fails before it queues
        deadline = time.monotonic() + timeout
        with self._turns.hold(key, timeout) as taken, contextlib.ExitStack() as held:
            if not taken:
                raise self._timed_out(key, timeout)
            with self._errors:
                if not self._tree.ready(create=False):
                    return None
                if not held.enter_context(
                    self._locked(*keys, timeout=deadline - time.monotonic())
                ):
                    raise self._timed_out(key, timeout)
                found, current = self._read_any(key)
            if current is None or current.expires_at <= _clock.now():
                return None
            # Outside the error translation: what build raises is the caller's own.
            record = build(current)
            if record is None:
                return None
            with self._errors:
                if new is None:
                    written = self._commit((key, found, current), record, None, None)
                else:
                    target = (new, *self._read_any(new))
                    there = target[2]
                    if there is not None and there.expires_at > _clock.now():
                        return None  # a move is a create: another session lives there
                    written = self._commit(target, record, (key, found, current), tombstone)
            return record if written else None

    def refresh(
        self, key: str, expires_at: float, last_seen: float, *, version: int | None = None
    ) -> bool:
        """Move the expiry and ``last_seen`` of a live record forward, never back.

        The new times go into a slot of the record file, written in place; the
        record itself is not rewritten.
        """
        shard = self._shard(key)
        with self._errors:
            if not self._tree.ready(create=False):
                return False
            with self._locked(key):
                return self._refresh(shard, key, expires_at, last_seen, version)

    def delete(self, key: str) -> bool:
        """Remove the record file under *key*; ``True`` if it held a live record.

        A tombstone is removed too, but is no live record.
        """
        self._shard(key)
        with self._errors:
            if not self._tree.ready(create=False):
                return False
            return self._delete(key)

    def ping(self) -> None:
        """Create the directory if needed, check it, and check that a file can be written in it.

        :raises StoreError: The directory cannot be created or written to, or is
            refused (another user's, or writable by others).
        """
        with self._errors:
            self._tree.ready(create=True)
            fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.directory)
            try:
                os.write(fd, b"ping")
            finally:
                os.close(fd)
                os.unlink(probe)

    def cleanup(self, *, limit: int | None = None) -> int:
        """Remove expired and undecodable records, at most *limit*; return how many.

        Temp files that crashed writers left behind are removed too once they are
        an hour old. Each file is judged by its header alone, then judged again
        under its shard's lock before it goes, so a record that a concurrent
        request just refreshed or re-created survives. A removed record leaves its
        user's index in the same step; a run that ends below *limit* then prunes
        every user's index of stale entries and removes the empty ones.
        """
        removed = 0
        now = _clock.now()
        # A temp file's age is measured on the clock that set its mtime: the kernel's.
        stale_before = time.time() - _TEMP_MAX_AGE
        with self._errors:
            if not self._tree.ready(create=False):
                return 0
            for shard, key, head in self._scan(stale_before):
                if limit is not None and removed >= limit:
                    break
                if head.expires_at > now:
                    continue
                with self._locked(key), contextlib.suppress(FileNotFoundError):
                    if self._head(shard, key).expires_at <= now:
                        with self._users.change([(key, self._record(key), None)]):
                            self._tree.unlink(f"{shard}/{key}")
                        removed += 1
            if limit is None or removed < limit:
                self._users.sweep(stale_before)
        return removed

    def user_records(self, user_id: str) -> list[tuple[str, Record]]:
        """Return the user's live records, read from its index file without a lock.

        Entries found stale (a record gone, expired or another user's) are then
        dropped under the user's lock.
        """
        with self._errors:
            if not self._tree.ready(create=False):
                return []
            return self._users.records(user_id)

    def count(self) -> int:
        """Return the number of live records, tombstones aside, from every file's header."""
        now = _clock.now()
        with self._errors:
            if not self._tree.ready(create=False):
                return 0
            return sum(1 for *_, h in self._scan() if h.expires_at > now and not h.tombstone)

    def claim_purge(self, interval: float) -> bool:
        """Claim the purge for *interval* seconds through a ``.purge`` lease file.

        The file holds the time of the last successful claim and is updated in
        place under ``flock``, so of the workers sharing the directory only one
        purges per interval. A claim dated in the future (a clock set back) is stale.
        The file must be a regular file of the store's user with no other name: a
        link planted there to make the store truncate another file is refused.
        """
        with self._errors:
            self._tree.ready(create=True)
            return claim_purge_lease(self._tree, interval)

    # -- internals ---------------------------------------------------------------

    def _shard(self, key: str) -> str:
        if not KEY.fullmatch(key):
            raise ValueError("not a store key: expected 64 lowercase hex digits")
        return self._tree.shard(self.directory, key)

    def _path(self, key: str) -> str:
        return self._shard(key) + "/" + key

    def _scan(self, stale_before: float = float("-inf")) -> Iterator[tuple[str, str, Header]]:
        """Yield the shard, key and header of every record file, shard by shard.

        Temp files last modified before *stale_before* are removed on the way.
        """
        for shard, key in self._tree.files(self.directory, stale_before):
            try:
                head = self._head(shard, key)
            except FileNotFoundError:
                continue  # files come and go under a scan that takes no lock
            yield shard, key, head

    def _head(self, shard: str, key: str) -> Header:
        """Return the header of the record file *key* in *shard*; a corrupt one's if none."""
        try:
            return header(self._tree.head(shard, key, HEAD_SIZE))
        except CorruptRecord:
            return UNREADABLE

    def _record(self, key: str) -> Record | None:
        """Return the record under *key*, expired or not; ``None`` if missing or unreadable."""
        return self._read_any(key)[1]

    def _read_any(self, key: str) -> tuple[bool, Record | None]:
        """Return whether a file is under *key*, and its record, expired or not.

        A file that holds no readable record is logged and read as ``None``.
        """
        try:
            blob = self._tree.read(self._shard(key), key)
        except CorruptRecord as exc:
            self._unreadable(key, exc)
            return True, None
        if blob is None:
            return False, None
        return True, self._decoded(key, blob)

    def _decoded(self, key: str, blob: bytes) -> Record | None:
        try:
            return decode_record(blob)
        except CorruptRecord as exc:
            self._unreadable(key, exc)
            return None

    def _unreadable(self, key: str, exc: CorruptRecord) -> None:
        log.warning("file store: record %s… is unreadable (%s); treated as missing", key[:8], exc)

    def _delete(self, key: str) -> bool:
        """Do :meth:`delete` once the directory is known to be there."""
        with self._locked(key):
            found, before = self._read_any(key)
            if not found:
                # A file that appears from now on was made by a lock-free create
                # ordered after this delete: it is not this delete's to remove.
                return False
            with self._users.change([(key, before, None)]):
                self._tree.unlink(self._path(key))
            if before is None or before.version == 0:
                return False
            return before.expires_at > _clock.now()

    def _refresh(
        self, shard: str, key: str, expires_at: float, last_seen: float, version: int | None
    ) -> bool:
        """Write the times of :meth:`refresh` into a slot of the record; hold its lock."""
        try:
            opened = self._tree.read_for_update(shard, key)
        except CorruptRecord as exc:
            self._unreadable(key, exc)
            return False
        if opened is None:
            return False
        fd, blob = opened
        try:
            current = self._decoded(key, blob)
            if current is None or current.version == 0 or current.expires_at <= _clock.now():
                return False
            if version is not None and current.version != version:
                return False
            if expires_at > current.expires_at or last_seen > current.last_seen:
                times = slot(
                    max(expires_at, current.expires_at), max(last_seen, current.last_seen)
                )
                if os.pwrite(fd, times, spare_slot(blob)) != len(times):
                    raise OSError(errno.EIO, "short write of a refresh slot")
                if self.fsync:
                    os.fsync(fd)
            return True
        finally:
            os.close(fd)

    def _locked(
        self, *keys: str, wait: bool = True, timeout: float | None = None
    ) -> contextlib.AbstractContextManager[bool]:
        """Hold the locks of the shards of *keys*; see :meth:`ShardLocks.hold`."""
        shards = [self._shard(key) for key in keys]  # a bad key fails before any mkdir
        return self._locks.hold(shards, wait=wait, timeout=timeout)

    def _commit(
        self, target: _Found, record: Record, old: _Found | None, tombstone: Record | None
    ) -> bool:
        """Write *record* over *target*, then remove *old* or put *tombstone* in its place.

        The caller holds the shard locks of both and has checked every condition of
        the write. Returns ``False``, having written nothing, if a lock-free create
        took *target*'s name first.
        """
        key, found, before = target
        changes: list[tuple[str, Record | None, Record | None]] = [(key, before, record)]
        if old is not None:
            changes.append((old[0], old[2], tombstone))
        try:
            with self._users.change(changes):
                if not self._put(key, found, encode_record(record)):
                    # Raised, not returned, so the index unlinks nothing: *old* stays.
                    raise _Lost
                if old is not None:
                    old_key, old_found, _ = old
                    if tombstone is not None:
                        self._put(old_key, old_found, encode_record(tombstone))
                    elif old_found:
                        self._tree.unlink(self._path(old_key))
        except _Lost:
            return False
        return True

    def _put(self, key: str, found: bool, blob: bytes) -> bool:
        """Make *blob* the file of *key*, holding its lock; ``False`` if a create won.

        *found* says whether a file was under *key* when read under the lock.
        """
        shard = self._shard(key)
        # With no file there, a lock-free create may race this one, so the name is
        # taken only if still free, as such a create would take it.
        created = None if found else self._tree.create(shard, key, blob)
        if created is None:
            self._tree.write(shard, key, blob)
        return created is not False

    def _timed_out(self, key: str, timeout: float) -> LockTimeout:
        return LockTimeout(
            f"{mask_url(self._what)}: session {key[:8]}… stayed locked for {timeout:g} s"
        )

"""A store that keeps one file per session in sharded sub-directories."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
import tempfile
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import replace as _replace
from typing import Any, Final, Self

from ..errors import ConfigError
from .base import Record, Store, translate_errors

__all__ = ["FileStore"]

log = logging.getLogger("wsgisession")

_KEY: Final = re.compile(r"[0-9a-f]{64}")
_OPTIONS: Final = ("file_mode", "fsync", "shard_depth")
_LOCK_NAME: Final = ".lock"
_PURGE_NAME: Final = ".purge"
_TEMP_PREFIX: Final = ".tmp-"
#: Seconds after which :meth:`FileStore.cleanup` takes a temp file for a crashed
#: writer's leftover; no live write takes this long.
_TEMP_MAX_AGE: Final = 3600.0

# magic, format version, flags, version, created_at, expires_at, last_seen, lengths
# of user_id, meta and data; then a CRC-32 of that and the body, then the body.
_HEAD: Final = struct.Struct(">4sBBQdddIII")
_CRC: Final = struct.Struct(">I")
_HEADER_SIZE: Final = _HEAD.size + _CRC.size
_MAGIC: Final = b"WSGS"
_FORMAT: Final = 1
_HAS_USER: Final = 1


class _Corrupt(Exception):
    """A record file that cannot be decoded; the message says why."""


def _encode(record: Record) -> bytes:
    user = b"" if record.user_id is None else record.user_id.encode("utf-8")
    body = user + record.meta + record.data
    flags = 0 if record.user_id is None else _HAS_USER
    times = (record.created_at, record.expires_at, record.last_seen)
    lengths = (len(user), len(record.meta), len(record.data))
    head = _HEAD.pack(_MAGIC, _FORMAT, flags, record.version, *times, *lengths)
    return head + _CRC.pack(zlib.crc32(body, zlib.crc32(head))) + body


def _decode(blob: bytes) -> Record:
    if len(blob) < _HEADER_SIZE:
        raise _Corrupt(f"truncated to {len(blob)} bytes")
    magic, fmt, flags, version, created, expires, seen, *lengths = _HEAD.unpack_from(blob)
    if magic != _MAGIC:
        raise _Corrupt("not a session record")
    if fmt != _FORMAT:
        raise _Corrupt(f"unknown format version {fmt}")
    n_user, n_meta, n_data = lengths
    body = memoryview(blob)[_HEADER_SIZE:]
    if len(body) != n_user + n_meta + n_data:
        raise _Corrupt(f"{len(body)} bytes of body, expected {n_user + n_meta + n_data}")
    (crc,) = _CRC.unpack_from(blob, _HEAD.size)
    if zlib.crc32(body, zlib.crc32(blob[: _HEAD.size])) != crc:
        raise _Corrupt("checksum mismatch")
    try:
        user_id = bytes(body[:n_user]).decode("utf-8") if flags & _HAS_USER else None
    except UnicodeDecodeError as exc:
        raise _Corrupt("user id is not UTF-8") from exc
    meta, data = bytes(body[n_user : n_user + n_meta]), bytes(body[n_user + n_meta :])
    return Record(data, version, created, expires, seen, user_id, meta)


def _header_expiry(path: str) -> float:
    """Return the ``expires_at`` in the header of the record file at *path*.

    A corrupt file reads as expired long ago, so cleanup removes it. A file of a
    newer format reads as never expiring: a newer worker sharing the directory may
    have written it, and only that worker can judge it.
    """
    with open(path, "rb") as f:
        head = f.read(_HEADER_SIZE)
    if len(head) < _HEADER_SIZE or head[:4] != _MAGIC or head[4] < _FORMAT:
        return float("-inf")
    if head[4] > _FORMAT:
        return float("inf")
    expires: float = _HEAD.unpack_from(head)[5]
    return expires


class FileStore(Store):
    """Keep each session in its own file under *directory*.

    Files are spread over ``shard_depth`` levels of sub-directories named by the
    key's leading hex digits, so no directory grows too large. A write goes to a
    temp file that replaces the record in one ``os.replace``, so a crash leaves the
    old record or the new one, never half of each; readers take no lock. Writers
    take an ``fcntl.flock`` on a lock file per shard directory, which serializes
    threads and processes alike, so several workers can share the directory on one
    machine (not over NFS, where ``flock`` is unreliable).

    A record file that cannot be decoded counts as missing and is logged. Keys must
    be 64 lowercase hex digits, as :func:`wsgisession.ids.store_key` makes them;
    any other key raises :exc:`ValueError`, a programming error, so that no key can
    name a file outside *directory*.

    :param directory: Where the records live; a relative path is resolved against
        the current directory now. It is created by the first write or :meth:`ping`.
    :param shard_depth: Levels of two-hex-digit sub-directories, from 0 to 4.
    :param fsync: Flush every write and its directory to disk, so a power loss
        keeps it too. Slower.
    :param file_mode: Permission bits of the record files; directories get the
        matching search bits.
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
        if type(file_mode) is not int or not 0o600 <= file_mode <= 0o777 or ~file_mode & 0o600:
            raise ConfigError(
                "store option 'file_mode' must be permission bits that let the owner "
                f"read and write, such as 0o600, got {file_mode!r}"
            )
        self.directory: Final = os.path.abspath(os.fspath(directory))
        self.shard_depth: Final = shard_depth
        self.fsync: Final = fsync
        self.file_mode: Final = file_mode
        self._dir_mode = file_mode | (file_mode & 0o444) >> 2

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
            if host not in ("", "localhost") or not slash:
                raise ConfigError(
                    f"store {url!r} must name a local directory, such as 'file:///var/sessions'"
                )
            path = "/" + urllib.parse.unquote(rest)
        if scheme.lower() != "file" or not path:
            raise ConfigError(f"store {url!r} must name a directory, such as 'file:./sessions'")
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
        """Return the live record under *key*, or ``None``; takes no lock."""
        with self._errors():
            return self._read(key)

    def save(
        self,
        key: str,
        record: Record,
        *,
        expected_version: int | None,
        replaces: str | None = None,
    ) -> bool:
        """Compare versions and write, under the lock of the key's shard.

        With *replaces*, the old record's file is removed under its shard's lock
        too, after the new record is in place: a crash in between leaves both, and
        the old one expires, rather than neither.
        """
        old = None if replaces is None or replaces == key else self._path(replaces)
        keys = (key,) if replaces is None else (key, replaces)
        with self._errors(), self._locked(*keys):
            current = self._read(key)
            if (None if current is None else current.version) != expected_version:
                return False
            self._write(key, record)
            if old is not None:
                self._unlink(old)
            return True

    def refresh(self, key: str, expires_at: float, last_seen: float) -> bool:
        """Move the expiry and ``last_seen`` of a live record forward, never back."""
        with self._errors(), self._locked(key):
            current = self._read(key)
            if current is None:
                return False
            if expires_at > current.expires_at or last_seen > current.last_seen:
                moved = _replace(
                    current,
                    expires_at=max(expires_at, current.expires_at),
                    last_seen=max(last_seen, current.last_seen),
                )
                self._write(key, moved)
            return True

    def delete(self, key: str) -> bool:
        """Remove the record file under *key*; ``True`` if it held a live record."""
        with self._errors(), self._locked(key):
            live = self._read(key) is not None
            self._unlink(self._path(key))
            return live

    def ping(self) -> None:
        """Create the directory if needed and check that a file can be written in it.

        :raises StoreError: The directory cannot be created or written to.
        """
        with self._errors():
            self._mkdir(self.directory)
            fd, probe = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self.directory)
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
        request just refreshed or re-created survives.
        """
        removed = 0
        now = time.time()
        with self._errors():
            for path, expires_at in self._scan(stale_before=now - _TEMP_MAX_AGE):
                if limit is not None and removed >= limit:
                    break
                if expires_at > now:
                    continue
                with self._locked(os.path.basename(path)), contextlib.suppress(FileNotFoundError):
                    if _header_expiry(path) <= now:
                        self._unlink(path)
                        removed += 1
        return removed

    def count(self) -> int:
        """Return the number of live records, reading the header of every file."""
        now = time.time()
        with self._errors():
            return sum(1 for _, expires_at in self._scan() if expires_at > now)

    def claim_purge(self, interval: float) -> bool:
        """Claim the purge for *interval* seconds through a ``.purge`` lease file.

        The file holds the time of the last successful claim and is updated in
        place under ``flock``, so of the workers sharing the directory only one
        purges per interval. A claim dated in the future (a clock set back) is stale.
        """
        with self._errors():
            self._mkdir(self.directory)
            path = os.path.join(self.directory, _PURGE_NAME)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, self.file_mode)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    last = float(os.read(fd, 64))
                except ValueError:
                    last = float("-inf")
                now = time.time()
                if 0 <= now - last < interval:
                    return False
                os.ftruncate(fd, 0)
                os.pwrite(fd, repr(now).encode("ascii"), 0)
                return True
            finally:
                os.close(fd)

    # -- internals ---------------------------------------------------------------

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return translate_errors(f"file store {self.directory}", OSError)

    def _shard(self, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise ValueError("not a store key: expected 64 lowercase hex digits")
        parts = [key[2 * i : 2 * i + 2] for i in range(self.shard_depth)]
        return os.path.join(self.directory, *parts)

    def _path(self, key: str) -> str:
        return os.path.join(self._shard(key), key)

    def _scan(self, stale_before: float = float("-inf")) -> Iterator[tuple[str, float]]:
        """Yield the path and header expiry of every record file, shard by shard.

        Temp files last modified before *stale_before* are removed on the way.
        """
        level = [self.directory]
        for _ in range(self.shard_depth):
            below: list[str] = []
            for directory in level:
                with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
                    below.extend(e.path for e in entries if len(e.name) == 2 and e.is_dir())
            level = below
        for shard in level:
            with contextlib.suppress(FileNotFoundError), os.scandir(shard) as entries:
                for entry in entries:
                    # Files come and go under a scan that takes no lock.
                    with contextlib.suppress(FileNotFoundError):
                        if _KEY.fullmatch(entry.name):
                            yield entry.path, _header_expiry(entry.path)
                        elif entry.name.startswith(_TEMP_PREFIX):
                            if entry.stat().st_mtime < stale_before:
                                self._unlink(entry.path)

    def _read(self, key: str) -> Record | None:
        try:
            with open(self._path(key), "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        try:
            record = _decode(blob)
        except _Corrupt as exc:
            log.warning(
                "file store: record %s… is unreadable (%s); treated as missing", key[:8], exc
            )
            return None
        return record if record.expires_at > time.time() else None

    @contextlib.contextmanager
    def _locked(self, *keys: str) -> Iterator[None]:
        """Hold the exclusive locks of the shards of *keys*, taken in sorted order.

        The lock file is opened anew each time: ``flock`` belongs to the open file
        description, so two threads of this process exclude each other as two
        processes do. The sorted order keeps two writers from deadlocking.
        """
        fds: list[int] = []
        try:
            for shard in sorted({self._shard(key) for key in keys}):
                self._mkdir(shard)
                lock = os.path.join(shard, _LOCK_NAME)
                fds.append(os.open(lock, os.O_RDWR | os.O_CREAT, self.file_mode))
                fcntl.flock(fds[-1], fcntl.LOCK_EX)
            yield
        finally:
            for fd in reversed(fds):
                os.close(fd)

    def _mkdir(self, path: str) -> None:
        """Create *path* and any missing shard levels above it with the store's mode."""
        try:
            os.mkdir(path, self._dir_mode)
        except FileExistsError:
            pass  # a file in its place fails on first use, with the right error
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if path == self.directory:
                os.makedirs(parent, exist_ok=True)
            else:
                self._mkdir(parent)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, self._dir_mode)

    def _write(self, key: str, record: Record) -> None:
        """Replace the record file of *key* through a temp file in the same directory."""
        shard = self._shard(key)
        blob = memoryview(_encode(record))
        fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=shard)
        try:
            try:
                os.fchmod(fd, self.file_mode)
                while blob:
                    blob = blob[os.write(fd, blob) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            # os.replace is atomic on POSIX, so a reader sees the old record or the
            # new one, never half of each.
            os.replace(temp, os.path.join(shard, key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        if self.fsync:
            self._sync_dir(shard)

    def _unlink(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            if self.fsync:
                self._sync_dir(os.path.dirname(path))

    def _sync_dir(self, directory: str) -> None:
        # The rename or unlink lives in the directory's entries, which need their own
        # fsync to survive a power loss.
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""The file store's user index, and the file handling it shares with the records.

Private to :mod:`wsgisession.stores.file`. :class:`Tree` keeps files named by 64 hex
digits in shard directories, replaces them atomically and locks them per shard.
:class:`UserIndex` keeps one such file per user, under ``<directory>/users/`` and
named by the SHA-256 of the user id, listing the keys of the user's records. The
file holds the user id itself, checked on every read, so that a misplaced file or a
hash collision can't mix two users up.

Locks: an index file changes only under the lock of its shard, which a writer takes
*after* the shard locks of the records it changes, never before, each kind in sorted
order, so no two operations wait on each other in a cycle. The one record lock taken
after a user's lock is tried without waiting (see :meth:`UserIndex._holds`).

Invariant, under a user's lock: every live record of that user is listed (a lost or
corrupt index is relisted by the records' next saves). Linking writes the index
before the record and unlinking after it, so a crash in between leaves a stale entry,
never a missing one; stale entries (a record gone, expired or another user's) are
dropped whenever the index is rewritten, read or swept.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Final

from .base import Record

if TYPE_CHECKING:
    from .file import FileStore

__all__ = [
    "KEY",
    "TEMP_PREFIX",
    "USERS_DIR",
    "CorruptIndex",
    "Tree",
    "UserIndex",
    "decode_index",
    "encode_index",
    "read_all",
]

log = logging.getLogger("wsgisession")

#: The names of record and index files: store keys, 64 lowercase hex digits.
KEY: Final = re.compile(r"[0-9a-f]{64}")
#: The prefix of temp files, which become a record or an index by ``os.replace``.
TEMP_PREFIX: Final = ".tmp-"
#: The sub-directory of the store's directory that holds the user index.
USERS_DIR: Final = "users"
_LOCK_NAME: Final = ".lock"

# magic, format version, length of the user id, number of keys; then a CRC-32 of that
# and the body, then the body: the UTF-8 user id and the keys as 32 raw bytes each.
#: What ``os.link`` fails with where the file system has no hard links.
_NO_LINKS: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})

_HEAD: Final = struct.Struct(">4sBII")
_CRC: Final = struct.Struct(">I")
_HEADER_SIZE: Final = _HEAD.size + _CRC.size
_MAGIC: Final = b"WSGU"
_FORMAT: Final = 1
_KEY_SIZE: Final = 32


class Tree:
    """Files in shard directories, replaced atomically and locked per shard.

    *directory* is the store's directory; the trees of records and of the index
    both live under it. A shard is ``shard_depth`` levels of two-hex-digit
    directories named by the leading digits of a file's name. Shard directories
    are created when a write or a lock first finds one missing, never ahead of it.
    """

    def __init__(self, directory: str, *, shard_depth: int, fsync: bool, file_mode: int):
        self.directory: Final = directory
        self.shard_depth: Final = shard_depth
        self.fsync: Final = fsync
        self.file_mode: Final = file_mode
        self._dir_mode = file_mode | (file_mode & 0o444) >> 2
        self._held = threading.local()  # .dirs: the shards whose lock this thread holds
        #: False once ``os.link`` failed for want of hard links (some FUSE and FAT
        #: file systems); :meth:`create` then declines and creates take the lock.
        self.links = True

    def shard(self, root: str, name: str) -> str:
        """Return the shard directory of the file *name* in the tree at *root*."""
        parts = [root]
        parts += [name[i : i + 2] for i in range(0, 2 * self.shard_depth, 2)]
        return "/".join(parts)

    @contextlib.contextmanager
    def lock(self, shards: Iterable[str], *, wait: bool = True) -> Iterator[bool]:
        """Hold the exclusive ``flock`` of each of *shards*, taken in sorted order.

        The lock file is opened anew each time: ``flock`` belongs to the open file
        description, so two threads of this process exclude each other as two
        processes do. The sorted order keeps two writers from deadlocking, and a
        lock this thread already holds is not taken again. Without *wait*, yields
        ``False``, holding nothing, when a lock is held elsewhere.
        """
        held: set[str] | None = getattr(self._held, "dirs", None)
        if held is None:
            held = self._held.dirs = set()
        wanted = sorted(set(shards) - held)
        fds: list[int] = []
        try:
            for shard in wanted:
                fds.append(self._open_lock(shard))
                try:
                    fcntl.flock(fds[-1], fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    break
            else:
                held.update(wanted)
                try:
                    yield True
                finally:
                    held.difference_update(wanted)
                return
        finally:
            for fd in reversed(fds):
                os.close(fd)
        yield False

    def mkdir(self, path: str) -> None:
        """Create *path* and any missing shard levels above it with the store's mode."""
        parent = os.path.dirname(path)
        try:
            os.mkdir(path, self._dir_mode)
        except FileExistsError:
            return  # a file in its place fails on first use, with the right error
        except FileNotFoundError:
            if path == self.directory:
                os.makedirs(parent, exist_ok=True)
            else:
                self.mkdir(parent)
            try:
                os.mkdir(path, self._dir_mode)
            except FileExistsError:
                return
        if self.fsync:
            self._sync_dir(parent)

    def files(self, root: str, stale_before: float) -> Iterator[str]:
        """Yield the paths of the files named like keys in the shards under *root*.

        Temp files last modified before *stale_before* are removed on the way.
        """
        level = [root]
        for _ in range(self.shard_depth):
            below: list[str] = []
            for directory in level:
                with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
                    below.extend(e.path for e in entries if len(e.name) == 2 and e.is_dir())
            level = below
        for shard in level:
            with contextlib.suppress(FileNotFoundError), os.scandir(shard) as entries:
                for entry in entries:
                    if KEY.fullmatch(entry.name):
                        yield entry.path
                    elif entry.name.startswith(TEMP_PREFIX):
                        # Files come and go under a scan that takes no lock.
                        with contextlib.suppress(FileNotFoundError):
                            if entry.stat().st_mtime < stale_before:
                                self.unlink(entry.path)

    def read(self, path: str) -> bytes | None:
        """Return the whole file at *path*, or ``None`` if there is none."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return read_all(fd)
        finally:
            os.close(fd)

    def write(self, shard: str, name: str, data: bytes) -> None:
        """Replace the file *name* in *shard* through a temp file in the same directory."""
        temp = self._temp(shard, data)
        try:
            # os.replace is atomic on POSIX, so a reader sees the old file or the new
            # one, never half of each.
            os.replace(temp, os.path.join(shard, name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        if self.fsync:
            self._sync_dir(shard)

    def create(self, shard: str, name: str, data: bytes) -> bool | None:
        """Create the file *name* in *shard* unless one is there; ``True`` if created.

        Takes no lock: ``os.link`` of a complete temp file fails if the name exists,
        so of two creators exactly one wins, and a reader never sees a partial file.
        Returns ``None``, having created nothing, on a file system without hard
        links: there no create can win this way, so one that holds the shard's lock
        may use :meth:`write`.
        """
        if not self.links:
            return None
        temp = self._temp(shard, data)
        try:
            os.link(temp, os.path.join(shard, name))
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            self.links = False
            return None
        finally:
            # A crash before this leaves only a temp file, which cleanup removes.
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if self.fsync:
            self._sync_dir(shard)
        return True

    def unlink(self, path: str) -> None:
        """Remove the file at *path* if it is there."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            if self.fsync:
                self._sync_dir(os.path.dirname(path))

    def _open_lock(self, shard: str) -> int:
        # The shard is created only when its lock file can't be: one open a lock,
        # where a mkdir before each one was a failed syscall and an exception.
        lock = os.path.join(shard, _LOCK_NAME)
        try:
            return os.open(lock, os.O_RDWR | os.O_CREAT, self.file_mode)
        except FileNotFoundError:
            self.mkdir(shard)
            return os.open(lock, os.O_RDWR | os.O_CREAT, self.file_mode)

    def _temp(self, shard: str, data: bytes) -> str:
        """Write *data* to a new temp file in *shard*, creating the shard if missing."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        while True:
            temp = os.path.join(shard, TEMP_PREFIX + secrets.token_hex(8))
            try:
                fd = os.open(temp, flags, self.file_mode)
            except FileExistsError:
                continue
            except FileNotFoundError:
                self.mkdir(shard)
                continue
            break
        try:
            blob = memoryview(data)
            # The umask may have taken bits from the mode given to open.
            os.fchmod(fd, self.file_mode)
            while blob:
                blob = blob[os.write(fd, blob) :]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        os.close(fd)
        return temp

    def _sync_dir(self, directory: str) -> None:
        # The rename or unlink lives in the directory's entries, which need their own
        # fsync to survive a power loss.
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_all(fd: int) -> bytes:
    """Return the rest of the open regular file *fd*: its size in one read, then to EOF."""
    blob = os.read(fd, os.fstat(fd).st_size)
    while more := os.read(fd, 65536):
        blob += more
    return blob


class CorruptIndex(Exception):
    """An index file that cannot be decoded; the message says why."""


def _utf8(user_id: str) -> bytes:
    # surrogatepass: looking up any str must not fail; records need strict UTF-8 anyway.
    return user_id.encode("utf-8", "surrogatepass")


def encode_index(user_id: str, keys: Iterable[str]) -> bytes:
    """Return the index file of *user_id* listing *keys* (store keys, 64 hex digits)."""
    user = _utf8(user_id)
    packed = [bytes.fromhex(key) for key in sorted(keys)]
    head = _HEAD.pack(_MAGIC, _FORMAT, len(user), len(packed))
    body = user + b"".join(packed)
    return head + _CRC.pack(zlib.crc32(body, zlib.crc32(head))) + body


def decode_index(blob: bytes) -> tuple[str, set[str]]:
    """Return the user id and the keys of an index file.

    :raises CorruptIndex: *blob* is not an index file of this format.
    """
    if len(blob) < _HEADER_SIZE:
        raise CorruptIndex(f"truncated to {len(blob)} bytes")
    magic, fmt, n_user, n_keys = _HEAD.unpack_from(blob)
    if magic != _MAGIC:
        raise CorruptIndex("not a user index")
    if fmt != _FORMAT:
        raise CorruptIndex(f"unknown format version {fmt}")
    body = blob[_HEADER_SIZE:]
    if len(body) != n_user + n_keys * _KEY_SIZE:
        raise CorruptIndex(f"{len(body)} bytes of body, expected {n_user + n_keys * _KEY_SIZE}")
    (crc,) = _CRC.unpack_from(blob, _HEAD.size)
    if zlib.crc32(body, zlib.crc32(blob[: _HEAD.size])) != crc:
        raise CorruptIndex("checksum mismatch")
    try:
        user_id = body[:n_user].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise CorruptIndex("user id is not UTF-8") from exc
    keys = {body[i : i + _KEY_SIZE].hex() for i in range(n_user, len(body), _KEY_SIZE)}
    return user_id, keys


class UserIndex:
    """The user index of a :class:`~wsgisession.stores.file.FileStore`.

    Files go through the store's :class:`Tree`, so they get its modes, atomic
    replacement and ``fsync``; records are read through the store. Nothing here
    translates ``OSError``: the store's methods do.
    """

    def __init__(self, store: FileStore, tree: Tree) -> None:
        self._store = store
        self._tree = tree
        self.root: Final = os.path.join(tree.directory, USERS_DIR)

    def path(self, user_id: str) -> str:
        """Return the path of the index file of *user_id*."""
        digest = hashlib.sha256(_utf8(user_id)).hexdigest()
        return os.path.join(self._tree.shard(self.root, digest), digest)

    def locked(self, user_ids: Iterable[str]) -> contextlib.AbstractContextManager[bool]:
        """Hold the locks of the index shards of *user_ids*."""
        return self._tree.lock(os.path.dirname(self.path(user_id)) for user_id in user_ids)

    @contextlib.contextmanager
    def change(
        self, changes: Iterable[tuple[str, Record | None, Record | None]]
    ) -> Iterator[None]:
        """Move the index entries of records changed in the block, under the users' locks.

        Each change is ``(key, before, after)``: the record under *key* before the
        block and after it (``None`` when missing). The caller holds the locks of
        the records' shards. A record is linked to its user before the block
        (again, if already there: that rebuilds a lost index) and unlinked from a
        previous user after it; an exception in the block skips the unlinking.
        """
        link: list[tuple[str, str]] = []
        unlink: list[tuple[str, str]] = []
        for key, before, after in changes:
            user_id = None if after is None else after.user_id
            if user_id is not None:
                link.append((user_id, key))
            if before is not None and before.user_id is not None and before.user_id != user_id:
                unlink.append((before.user_id, key))
        if not link and not unlink:
            yield
            return
        with self.locked(user_id for user_id, _ in (*link, *unlink)):
            for user_id, key in link:
                self._update(user_id, add={key})
            yield
            for user_id, key in unlink:
                self._update(user_id, remove={key})

    def records(self, user_id: str) -> list[tuple[str, Record]]:
        """Return the user's live records; then drop the stale entries seen, if any."""
        keys = self._load(user_id)
        found: list[tuple[str, Record]] = []
        for key in keys:
            record = self._store._read(key)
            if record is not None and record.user_id == user_id:
                found.append((key, record))
        if len(found) < len(keys):
            with self.locked([user_id]):
                self._update(user_id, prune=True)
        return found

    def sweep(self, stale_before: float) -> None:
        """Prune every index that has a stale entry; remove empty and corrupt ones.

        For :meth:`FileStore.cleanup`, holding no lock. Temp files of the index
        last modified before *stale_before* are removed on the way.
        """
        for path in self._tree.files(self.root, stale_before):
            try:
                user_id, keys = self._read_file(path)
            except FileNotFoundError:
                continue
            except CorruptIndex:
                self._drop_corrupt(path)
                continue
            if not keys or not all(self._listed_live(user_id, key) for key in keys):
                with self.locked([user_id]):
                    self._update(user_id, prune=True)

    # -- internals ----------------------------------------------------------------

    def _read_file(self, path: str) -> tuple[str, set[str]]:
        blob = self._tree.read(path)
        if blob is None:
            raise FileNotFoundError(path)
        user_id, keys = decode_index(blob)
        if self.path(user_id) != path:
            raise CorruptIndex("it names another user")
        return user_id, keys

    def _load(self, user_id: str) -> set[str]:
        """Return the keys listed for *user_id*; a corrupt index is logged and empty."""
        path = self.path(user_id)
        try:
            return self._read_file(path)[1]
        except FileNotFoundError:
            return set()
        except CorruptIndex as exc:
            _log_corrupt(path, exc)
            return set()

    def _update(
        self,
        user_id: str,
        *,
        add: Collection[str] = (),
        remove: Collection[str] = (),
        prune: bool = False,
    ) -> None:
        """Rewrite the user's index with *add* and without *remove*; hold its lock.

        A rewrite, and a *prune*, drops every other entry whose record is gone,
        unreadable, expired or another user's; an index left empty is removed.
        """
        old = self._load(user_id)
        keys = (old - set(remove)) | set(add)
        if keys == old and not prune:
            return
        keys = {key for key in keys if key in add or self._holds(user_id, key)}
        path = self.path(user_id)
        if not keys:
            self._tree.unlink(path)  # an unreadable one too: rebuilt from now on
        elif keys != old:
            data = encode_index(user_id, keys)
            self._tree.write(os.path.dirname(path), os.path.basename(path), data)

    def _listed_live(self, user_id: str, key: str) -> bool:
        record = self._store._read(key)
        return record is not None and record.user_id == user_id

    def _holds(self, user_id: str, key: str) -> bool:
        """Whether the entry of *key* stays in the index of *user_id*; hold its lock.

        A record that is missing, unreadable or another user's becomes this user's
        only by a save under this user's lock, which the caller holds. An expired
        one is judged again under its record lock, tried without waiting: a refresh
        that found it live just before it expired may be about to write it.
        """
        record = self._store._read(key, expired=True)
        if record is None or record.user_id != user_id:
            return False
        if record.expires_at > time.time():
            return True
        with self._store._locked(key, wait=False) as got:
            return not got or self._store._read(key) is not None

    def _drop_corrupt(self, path: str) -> None:
        # Judged again under the lock: a writer may have rebuilt the file meanwhile.
        with self._tree.lock([os.path.dirname(path)]):
            try:
                self._read_file(path)
            except FileNotFoundError:
                pass
            except CorruptIndex as exc:
                _log_corrupt(path, exc)
                self._tree.unlink(path)


def _log_corrupt(path: str, exc: CorruptIndex) -> None:
    name = os.path.basename(path)[:8]
    log.warning("file store: user index %s… is unreadable (%s); treated as empty", name, exc)

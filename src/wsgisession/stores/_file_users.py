"""The file store's user index: which records belong to which user.

Private to :mod:`wsgisession.stores.file`. :class:`UserIndex` keeps one file per
user, under ``<directory>/users/`` and named by the SHA-256 of the user id, listing
the keys of the user's records, each with the expiry its record had when the index
last looked at it. The file holds the user id itself, checked on every read, so that
a misplaced file or a hash collision can't mix two users up. Its files are written
and replaced through the store's :class:`~wsgisession.stores._file_tree.Tree` and
locked through its :class:`~wsgisession.stores._file_locks.ShardLocks`, like the
records; the records themselves it reads through the function the store gives it,
and knows nothing of their format.

Locks: an index file changes only under the lock of its shard, which a writer takes
*after* the shard locks of the records it changes, never before, each kind in sorted
order, so no two operations wait on each other in a cycle. The one record lock taken
after a user's lock is tried without waiting (see :meth:`UserIndex._holds`).

Invariant, under a user's lock: every live record of that user is listed (a lost or
corrupt index is relisted by the records' next saves). Linking writes the index
before the record and unlinking after it, so a crash in between leaves a stale entry,
never a missing one. Stale entries (a record gone, expired or another user's) are
dropped whenever the index is read or swept, and whenever it is rewritten those whose
recorded expiry has passed: a session ends by expiring or by a change that unlinks it
in the same step, so an entry whose recorded expiry is still ahead needs no read of
its record, and linking a session reads only the records whose expiry passed since
the index last looked, not every record of the user. A record read then keeps its
entry with its current expiry (a refresh moved it), so it is not read again before
that. The index holds at most the user's live sessions and those that ended since it
was last rewritten, or that a crash left behind, until their expiry.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Final

from .. import _clock
from ._file_locks import ShardLocks
from ._file_tree import Tree
from .base import CorruptRecord, Record

__all__ = [
    "USERS_DIR",
    "CorruptIndex",
    "UserIndex",
    "decode_index",
    "encode_index",
]

log = logging.getLogger("wsgisession")

#: The sub-directory of the store's directory that holds the user index.
USERS_DIR: Final = "users"

# magic, format version, length of the user id, number of keys; then a CRC-32 of that
# and the body, then the body: the UTF-8 user id, and each key as 32 raw bytes followed
# (from format 2) by the expiry of its record when last seen, a big-endian double.
_HEAD: Final = struct.Struct(">4sBII")
_CRC: Final = struct.Struct(">I")
_EXPIRY: Final = struct.Struct(">d")
_HEADER_SIZE: Final = _HEAD.size + _CRC.size
_MAGIC: Final = b"WSGU"
_FORMAT: Final = 2
_KEY_SIZE: Final = 32
#: The size of an entry in each format; format 1 had no expiries.
_ENTRY_SIZE: Final = {1: _KEY_SIZE, 2: _KEY_SIZE + _EXPIRY.size}
#: The recorded expiry of an entry of format 1: unknown, so looked at on the next rewrite.
_UNKNOWN: Final = float("-inf")


class CorruptIndex(Exception):
    """An index file that cannot be decoded; the message says why."""


def _utf8(user_id: str) -> bytes:
    # surrogatepass: looking up any str must not fail; records need strict UTF-8 anyway.
    return user_id.encode("utf-8", "surrogatepass")


def encode_index(user_id: str, entries: Mapping[str, float]) -> bytes:
    """Return the index file of *user_id* listing *entries*, keys and their records' expiry.

    The keys are store keys, 64 hex digits, written in sorted order.
    """
    user = _utf8(user_id)
    packed = [bytes.fromhex(key) + _EXPIRY.pack(entries[key]) for key in sorted(entries)]
    head = _HEAD.pack(_MAGIC, _FORMAT, len(user), len(packed))
    body = user + b"".join(packed)
    return head + _CRC.pack(zlib.crc32(body, zlib.crc32(head))) + body


def decode_index(blob: bytes) -> tuple[str, dict[str, float]]:
    """Return the user id and the entries of an index file: keys and their recorded expiry.

    A file of format 1, which had no expiries, is read with every expiry unknown
    (``-inf``), so the next rewrite looks at each record once.

    :raises CorruptIndex: *blob* is not an index file of a known format.
    """
    if len(blob) < _HEADER_SIZE:
        raise CorruptIndex(f"truncated to {len(blob)} bytes")
    magic, fmt, n_user, n_keys = _HEAD.unpack_from(blob)
    if magic != _MAGIC:
        raise CorruptIndex("not a user index")
    size = _ENTRY_SIZE.get(fmt)
    if size is None:
        raise CorruptIndex(f"unknown format version {fmt}")
    body = blob[_HEADER_SIZE:]
    if len(body) != n_user + n_keys * size:
        raise CorruptIndex(f"{len(body)} bytes of body, expected {n_user + n_keys * size}")
    (crc,) = _CRC.unpack_from(blob, _HEAD.size)
    if zlib.crc32(body, zlib.crc32(blob[: _HEAD.size])) != crc:
        raise CorruptIndex("checksum mismatch")
    try:
        user_id = body[:n_user].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise CorruptIndex("user id is not UTF-8") from exc
    entries: dict[str, float] = {}
    for at in range(n_user, len(body), size):
        key = body[at : at + _KEY_SIZE].hex()
        entries[key] = _EXPIRY.unpack_from(body, at + _KEY_SIZE)[0] if fmt > 1 else _UNKNOWN
    return user_id, entries


class UserIndex:
    """The user index of a :class:`~wsgisession.stores.file.FileStore`.

    Files go through the store's *tree*, so they get its checks, modes, atomic
    replacement and ``fsync``, and are locked through its *locks*. *read* returns
    the record under a key, expired or not, or ``None`` if there is none or it is
    unreadable; a record's lock is that of its shard at the root of *tree*. Nothing
    here translates ``OSError``: the store's methods do.
    """

    def __init__(
        self, tree: Tree, locks: ShardLocks, read: Callable[[str], Record | None]
    ) -> None:
        self._tree = tree
        self._locks = locks
        self._read = read
        self.root: Final = os.path.join(tree.directory, USERS_DIR)

    def path(self, user_id: str) -> str:
        """Return the path of the index file of *user_id*."""
        digest = hashlib.sha256(_utf8(user_id)).hexdigest()
        return os.path.join(self._tree.shard(self.root, digest), digest)

    def locked(self, user_ids: Iterable[str]) -> contextlib.AbstractContextManager[bool]:
        """Hold the locks of the index shards of *user_ids*."""
        return self._locks.hold(os.path.dirname(self.path(user_id)) for user_id in user_ids)

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
        link: list[tuple[str, str, float]] = []
        unlink: list[tuple[str, str]] = []
        for key, before, after in changes:
            user_id = None if after is None else after.user_id
            if after is not None and user_id is not None:
                link.append((user_id, key, after.expires_at))
            if before is not None and before.user_id is not None and before.user_id != user_id:
                unlink.append((before.user_id, key))
        if not link and not unlink:
            yield
            return
        with self.locked([entry[0] for entry in link] + [entry[0] for entry in unlink]):
            for user_id, key, expires_at in link:
                self._update(user_id, add={key: expires_at})
            yield
            for user_id, key in unlink:
                self._update(user_id, remove={key})

    def records(self, user_id: str) -> list[tuple[str, Record]]:
        """Return the user's live records; then drop the stale entries seen, if any."""
        keys = self._load(user_id)
        found: list[tuple[str, Record]] = []
        for key in keys:
            record = self._live(user_id, key)
            if record is not None:
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
        for shard, name in self._tree.files(self.root, stale_before):
            path = f"{shard}/{name}"
            try:
                user_id, keys = self._read_file(path)
            except FileNotFoundError:
                continue
            except CorruptIndex:
                self._drop_corrupt(path)
                continue
            if not keys or any(self._live(user_id, key) is None for key in keys):
                with self.locked([user_id]):
                    self._update(user_id, prune=True)

    # -- internals ----------------------------------------------------------------

    def _read_file(self, path: str) -> tuple[str, dict[str, float]]:
        try:
            blob = self._tree.read(*os.path.split(path))
        except CorruptRecord as exc:
            raise CorruptIndex(str(exc)) from None
        if blob is None:
            raise FileNotFoundError(path)
        user_id, keys = decode_index(blob)
        if self.path(user_id) != path:
            raise CorruptIndex("it names another user")
        return user_id, keys

    def _load(self, user_id: str) -> dict[str, float]:
        """Return the entries listed for *user_id*; a corrupt index is logged and empty."""
        path = self.path(user_id)
        try:
            return self._read_file(path)[1]
        except FileNotFoundError:
            return {}
        except CorruptIndex as exc:
            _log_corrupt(path, exc)
            return {}

    def _update(
        self,
        user_id: str,
        *,
        add: Mapping[str, float] | None = None,
        remove: Collection[str] = (),
        prune: bool = False,
    ) -> None:
        """Rewrite the user's index with *add* and without *remove*; hold its lock.

        *add* maps keys to their records' expiry. A rewrite looks again at every other
        entry whose recorded expiry has passed, a *prune* at every entry: one whose
        record is gone, unreadable, expired or another user's is dropped, and the others
        keep their record's current expiry. An index left empty is removed.
        """
        add = add or {}
        old = self._load(user_id)
        entries = {key: known for key, known in old.items() if key not in remove}
        entries.update(add)
        if entries.keys() == old.keys() and not prune:
            return
        now = _clock.now()
        for key, known in list(entries.items()):
            if key not in add and (prune or known <= now):
                expires_at = self._holds(user_id, key)
                if expires_at is None:
                    del entries[key]
                else:
                    entries[key] = expires_at
        path = self.path(user_id)
        if not entries:
            self._tree.unlink(path)  # an unreadable one too: rebuilt from now on
        elif entries != old:
            data = encode_index(user_id, entries)
            self._tree.write(os.path.dirname(path), os.path.basename(path), data)

    def _live(self, user_id: str, key: str) -> Record | None:
        """Return the record under *key* if it is live and *user_id*'s, else ``None``."""
        record = self._read(key)
        if record is None or record.user_id != user_id or record.expires_at <= _clock.now():
            return None
        return record

    def _holds(self, user_id: str, key: str) -> float | None:
        """Return the expiry the entry of *key* keeps in the index of *user_id*, if it stays.

        ``None`` drops it. The caller holds the user's lock. A record that is missing,
        unreadable or another user's becomes this user's only by a save under this
        user's lock. An expired one is judged again under its record lock, tried
        without waiting: a refresh that found it live just before it expired may be
        about to write it.
        """
        record = self._read(key)
        if record is None or record.user_id != user_id:
            return None
        if record.expires_at > _clock.now():
            return record.expires_at
        record_shard = self._tree.shard(self._tree.directory, key)
        with self._locks.hold([record_shard], wait=False) as got:
            if not got:
                return record.expires_at  # looked at again on the next rewrite
            again = self._read(key)
            if again is None or again.expires_at <= _clock.now():
                return None
            return again.expires_at

    def _drop_corrupt(self, path: str) -> None:
        # Judged again under the lock: a writer may have rebuilt the file meanwhile.
        with self._locks.hold([os.path.dirname(path)]):
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

"""The file store's files on disk: shard directories, atomic replacement, shard locks.

Private to :mod:`wsgisession.stores.file` and :mod:`wsgisession.stores.file_index`.
The records and the user index are both files named by 64 hex digits in shard
directories, written and locked the same way, so that handling lives here once and
neither of them needs to know what the other's files contain. Nothing here
translates ``OSError``: the store's methods do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Final

__all__ = ["KEY", "TEMP_PREFIX", "Tree", "read_all"]

#: The names of record and index files: store keys, 64 lowercase hex digits.
KEY: Final = re.compile(r"[0-9a-f]{64}")
#: The prefix of temp files, which become a record or an index by ``os.replace``.
TEMP_PREFIX: Final = ".tmp-"
_LOCK_NAME: Final = ".lock"
#: What ``os.link`` fails with where the file system has no hard links.
_NO_LINKS: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


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
    def lock(
        self, shards: Iterable[str], *, wait: bool = True, timeout: float | None = None
    ) -> Iterator[bool]:
        """Hold the exclusive ``flock`` of each of *shards*, taken in sorted order.

        The lock file is opened anew each time: ``flock`` belongs to the open file
        description, so two threads of this process exclude each other as two
        processes do. The sorted order keeps two writers from deadlocking, and a
        lock this thread already holds is not taken again. Without *wait*, yields
        ``False``, holding nothing, when a lock is held elsewhere; with a *timeout*,
        when the locks could not all be taken within that many seconds.
        """
        held: set[str] | None = getattr(self._held, "dirs", None)
        if held is None:
            held = self._held.dirs = set()
        wanted = sorted(set(shards) - held)
        deadline = None if timeout is None else time.monotonic() + timeout
        fds: list[int] = []
        try:
            for shard in wanted:
                fds.append(self._open_lock(shard))
                if deadline is not None:
                    if not _flock_by(fds[-1], deadline):
                        break
                    continue
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
        # Something already there (another worker's new shard, or a file in its
        # place, which fails on first use with the right error) is synced all the
        # same: the worker that made it may not have flushed its parent yet.
        try:
            os.mkdir(path, self._dir_mode)
        except FileExistsError:
            pass
        except FileNotFoundError:
            if path == self.directory:
                os.makedirs(parent, exist_ok=True)
            else:
                self.mkdir(parent)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, self._dir_mode)
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
        made_shard = False
        while True:
            temp = os.path.join(shard, TEMP_PREFIX + secrets.token_hex(8))
            try:
                fd = os.open(temp, flags, self.file_mode)
            except FileExistsError:
                continue
            except FileNotFoundError:
                if made_shard:
                    # mkdir found something in the shard's place that is no
                    # directory (a dangling symlink, an unmounted volume): retrying
                    # would spin forever, so the error goes up.
                    raise
                self.mkdir(shard)
                made_shard = True
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


def _flock_by(fd: int, deadline: float) -> bool:
    """Take the exclusive ``flock`` of *fd* by *deadline* (``time.monotonic()``), or don't.

    Returns whether it was taken. ``flock`` has no timeout, and polling with
    ``LOCK_NB`` would keep losing to blocking waiters (plain saves among them), which
    the kernel wakes the moment the lock is free. So a contended lock is waited for
    by a thread, in a blocking ``flock`` on a duplicate of *fd*: the two share one
    open file description, which is what holds the lock. Given up on, the thread is
    left to its wait and closes the duplicate when its ``flock`` returns; the caller
    closes *fd*, and the last of the two closes releases a lock taken too late.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        if deadline <= time.monotonic():
            return False
    spare = os.dup(fd)
    taken = threading.Event()
    failed: list[OSError] = []

    def wait() -> None:
        try:
            fcntl.flock(spare, fcntl.LOCK_EX)
        except OSError as exc:
            failed.append(exc)
        finally:
            os.close(spare)
            taken.set()

    try:
        threading.Thread(target=wait, name="wsgisession-flock", daemon=True).start()
    except BaseException as exc:
        os.close(spare)
        if isinstance(exc, RuntimeError):  # out of threads: a store failure like ENOLCK
            raise OSError(errno.EAGAIN, f"no thread to wait for a lock: {exc}") from exc
        raise
    if not taken.wait(max(0.0, deadline - time.monotonic())):
        return False
    if failed:
        raise failed[0]
    return True

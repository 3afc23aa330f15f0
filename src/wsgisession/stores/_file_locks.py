"""How the workers sharing a file store's directory exclude each other.

Private to the file store's modules. Two kinds of lock, both an ``fcntl.flock`` on a
file of the :class:`~wsgisession.stores._file_tree.Tree`: :class:`ShardLocks`, one per
shard directory, which every write of a record or of a user's index holds; and the
purge lease (:func:`claim_purge_lease`), which lets one worker of many purge per interval.
``flock`` belongs to an open file description, so it excludes the threads of one
process from each other as it does processes; it is not reliable over NFS. Nothing
here translates ``OSError``: the store's methods do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Final

from .. import _clock
from ._file_tree import Tree, Unsafe
from .base import CorruptRecord

__all__ = ["ShardLocks", "claim_purge_lease"]

_PURGE_NAME: Final = ".purge"


class ShardLocks:
    """The exclusive ``flock`` of each shard's lock file in *tree*.

    Locks are taken in sorted order, so two writers that each want several never
    wait on each other in a cycle. A lock the calling thread already holds is not
    taken again: two keys may share a shard, and the user index may ask for a
    record's lock in a shard that the save it serves holds already.
    """

    def __init__(self, tree: Tree) -> None:
        self._tree = tree
        self._held = threading.local()  # .dirs: the shards whose lock this thread holds

    @contextlib.contextmanager
    def hold(
        self, shards: Iterable[str], *, wait: bool = True, timeout: float | None = None
    ) -> Iterator[bool]:
        """Hold the lock of each of *shards*; yield whether they were all taken.

        The lock file is opened anew each time, so two threads of this process get
        two open file descriptions and exclude each other. Without *wait*, yields
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
                fds.append(self._tree.open_lock(shard))
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


def claim_purge_lease(tree: Tree, interval: float) -> bool:
    """Claim the purge for *interval* seconds through the ``.purge`` lease file of *tree*.

    The file holds the time of the last successful claim and is updated in place
    under ``flock``, so of the workers sharing the directory only one purges per
    interval. A claim dated in the future (a clock set back) is stale. The file must
    be a regular file of the store's user with no other name: a link planted there
    to make the store truncate another file is refused with :exc:`Unsafe`.
    """
    fd = _open_lease(tree)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            last = float(os.read(fd, 64))
        except ValueError:
            last = float("-inf")
        now = _clock.now()
        if 0 <= now - last < interval:
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, repr(now).encode("ascii"), 0)
        return True
    finally:
        os.close(fd)


def _open_lease(tree: Tree) -> int:
    """Open the purge lease file, made if missing, refusing anything but our own file."""
    path = os.path.join(tree.directory, _PURGE_NAME)
    try:
        fd, found = tree.open(path, os.O_RDWR | os.O_CREAT)
    except CorruptRecord as exc:
        raise Unsafe(f"purge lease {_PURGE_NAME} is {exc}; refused") from None
    # A hard link to another file of ours would have that file truncated.
    if found.st_nlink != 1:
        os.close(fd)
        raise Unsafe(f"purge lease {_PURGE_NAME} has {found.st_nlink} names; refused")
    return fd


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

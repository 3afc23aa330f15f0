"""The file store's directory tree: shards, ownership checks, safe opens, atomic writes.

Private to the file store's modules. The records and the user index are both files
named by 64 hex digits in shard directories, written the same way and opened with the
same distrust of what may have been put in their place, as are the shards' lock files.
That handling lives here, and knows nothing of what the files contain or of who holds
a lock. Nothing here translates ``OSError``: the store's methods do.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from typing import Final

from .base import CorruptRecord

__all__ = ["KEY", "TEMP_PREFIX", "Tree", "Unsafe"]

log = logging.getLogger("wsgisession")

#: The names of record and index files: store keys, 64 lowercase hex digits.
KEY: Final = re.compile(r"[0-9a-f]{64}")
#: The prefix of temp files, which become a record or an index by ``os.replace``.
TEMP_PREFIX: Final = ".tmp-"
_LOCK_NAME: Final = ".lock"
#: What ``os.link`` fails with where the file system has no hard links.
_NO_LINKS: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
#: Added to every open of a file in the store: a symbolic link is never followed, and a
#: FIFO opens at once instead of waiting for a writer. Neither changes a regular file.
_SAFELY: Final = os.O_NOFOLLOW | os.O_NONBLOCK
#: Why an open with :data:`_SAFELY` failed on something that is no regular file.
_NOT_A_FILE: Final = {
    errno.ELOOP: "a symbolic link",
    errno.EISDIR: "a directory",
    errno.ENXIO: "not a regular file",  # a socket
}
#: How many checked directories and lock files a tree remembers, about 7 MB at most;
#: past that it forgets them all and checks each again on its next use. Only a store
#: with most of its 65,536 default shards in use gets there.
_CHECKED_MAX: Final = 1 << 16


class Unsafe(OSError):
    """Something in the store's directory that the store refuses to use; the message says what.

    An :exc:`OSError`, so that the store's methods turn it into a
    :exc:`~wsgisession.StoreError` like any other failure of the disk.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)

    def __str__(self) -> str:
        return str(self.strerror)


class Tree:
    """Files in shard directories, checked before use and replaced atomically.

    *directory* is the store's directory; the trees of records and of the index
    both live under it. A shard is ``shard_depth`` levels of two-hex-digit
    directories named by the leading digits of a file's name, holding a lock file
    (see :meth:`open_lock`). Shard directories are created when a write or a lock
    first finds one missing, never ahead of it.

    The tree owns its directory. :meth:`ready` checks it on first use: it must be a
    directory (a symbolic link to one is the operator's choice) owned by the process's
    effective user and writable by nobody else, the group aside when *file_mode* lets
    the group write the records anyway. Every directory below it is checked the same
    way on its first use, with ``lstat``, so a symbolic link or another user's
    directory in its place is refused with :exc:`Unsafe`; so is anything but a regular
    file of this user at the path of a lock file, checked with ``fstat``.

    A directory or lock file that passed is remembered by this process and not checked
    again: once the directory above it is known to be writable by its owner alone (or
    a group *file_mode* trusts), no one else can put anything in its place. What was
    there before the first check is what the check is for. Every open still passes
    ``O_NOFOLLOW``, so a link is never followed even so. Record and index files are
    checked on every read, with the ``fstat`` the read needs anyway for the size: they
    are opened with ``O_NOFOLLOW | O_NONBLOCK``, so a link or a FIFO fails or opens at
    once, and anything but a regular file of this user reads as corrupt.

    Missing directories, those above the store's included, are made with the search
    bits matching *file_mode*: ``0o700``, or ``0o750`` and ``0o770`` when the group may
    read or write.
    """

    def __init__(self, directory: str, *, shard_depth: int, fsync: bool, file_mode: int):
        self.directory: Final = directory
        self.shard_depth: Final = shard_depth
        self.fsync: Final = fsync
        self.file_mode: Final = file_mode
        self._dir_mode = file_mode | (file_mode & 0o444) >> 2
        # Others never write; the group may if it may write the records themselves.
        self._foreign_write = 0o002 if file_mode & 0o020 else 0o022
        #: False once ``os.link`` failed for want of hard links (some FUSE and FAT
        #: file systems); :meth:`create` then declines and creates take the lock.
        self.links = True
        #: The user every directory and file must belong to: the effective user at
        #: first use, not when the store was built (a server may drop root in between).
        self.uid = -1
        self._ready = False
        self._checked: set[str] = set()

    def ready(self, *, create: bool) -> bool:
        """Check the store's directory, the first time; return whether it exists.

        With *create*, a missing directory is made first, with its missing parents.

        :raises Unsafe: The directory is no directory, another user's, or writable by
            others.
        """
        if self._ready:
            return True
        self.uid = os.geteuid()
        try:
            found = os.stat(self.directory)
        except FileNotFoundError:
            if not create:
                return False
            self.mkdir(self.directory)
            found = os.stat(self.directory)
        self._judge(found, "the store's directory")
        self._checked.add(self.directory)
        self._ready = True
        return True

    def shard(self, root: str, name: str) -> str:
        """Return the shard directory of the file *name* in the tree at *root*."""
        parts = [root]
        parts += [name[i : i + 2] for i in range(0, 2 * self.shard_depth, 2)]
        return "/".join(parts)

    def mkdir(self, path: str) -> None:
        """Create the directory *path* of the store, and any missing above it, with its mode.

        What is found already there is checked on its next use, not trusted: the
        store's directory, made again, is checked again, as :meth:`ready` does.
        """
        parent = os.path.dirname(path)
        # Something already there (another worker's new shard, or a file in its
        # place, which fails on first use with the right error) is synced all the
        # same: the worker that made it may not have flushed its parent yet.
        try:
            self._mkdir(path)
        except FileNotFoundError:
            if path == self.directory:
                self._mkdir_parents(parent)
            else:
                self.mkdir(parent)
            self._mkdir(path)
        if path == self.directory:
            self._ready = False
            self._checked.clear()
        else:
            self._checked.discard(path)
        if self.fsync:
            self._sync_dir(parent)

    def files(self, root: str, stale_before: float) -> Iterator[tuple[str, str]]:
        """Yield the shard and name of each file named like a key in the shards under *root*.

        Temp files last modified before *stale_before* are removed on the way. A shard
        that fails its check (a symbolic link, another user's) is logged and skipped,
        never entered; something at a file's path that is a directory is passed over.
        """
        if not self._enter(root, create=False):
            return
        level = [root]
        for _ in range(self.shard_depth):
            below: list[str] = []
            for directory in level:
                with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
                    below.extend(e.path for e in entries if len(e.name) == 2 and self._usable(e))
            level = below
        for shard in level:
            with contextlib.suppress(FileNotFoundError), os.scandir(shard) as entries:
                for entry in entries:
                    if KEY.fullmatch(entry.name):
                        if not entry.is_dir(follow_symlinks=False):
                            yield shard, entry.name
                    elif entry.name.startswith(TEMP_PREFIX):
                        # Files come and go under a scan that takes no lock.
                        with contextlib.suppress(FileNotFoundError):
                            if entry.stat(follow_symlinks=False).st_mtime < stale_before:
                                self.unlink(entry.path)

    def read(self, shard: str, name: str) -> bytes | None:
        """Return the whole file *name* in *shard*, or ``None`` if there is none.

        :raises CorruptRecord: Something is there that is no regular file of the
            store's user; the message says what.
        """
        # What open() does, inlined: this is every load's path.
        if shard not in self._checked and not self._enter(shard, create=False):
            return None
        path = f"{shard}/{name}"
        try:
            fd = os.open(path, os.O_RDONLY | _SAFELY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._not_a_file(exc, path) from None
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode) or found.st_uid != self.uid:
                raise _wrong_file(found)
            return _read_all(fd, found.st_size)
        finally:
            os.close(fd)

    def head(self, shard: str, name: str, size: int) -> bytes:
        """Return the first *size* bytes of the file *name* in *shard*; see :meth:`read`.

        :raises FileNotFoundError: There is no such file.
        """
        if shard not in self._checked and not self._enter(shard, create=False):
            raise FileNotFoundError(errno.ENOENT, "no such shard", shard)
        # What open() does, inlined: scans call this for every file.
        path = f"{shard}/{name}"
        try:
            fd = os.open(path, os.O_RDONLY | _SAFELY)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._not_a_file(exc, path) from None
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode) or found.st_uid != self.uid:
                raise _wrong_file(found)
            return os.read(fd, size)
        finally:
            os.close(fd)

    def read_for_update(self, shard: str, name: str) -> tuple[int, bytes] | None:
        """Open the file *name* in *shard* to write in place; return it and what it holds.

        ``None`` if there is none; the caller closes the descriptor.

        :raises CorruptRecord: As :meth:`read`.
        """
        if shard not in self._checked and not self._enter(shard, create=False):
            return None
        try:
            fd, found = self.open(f"{shard}/{name}", os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            return fd, _read_all(fd, found.st_size)
        except BaseException:
            os.close(fd)
            raise

    def open(self, path: str, flags: int) -> tuple[int, os.stat_result]:
        """Open the regular file at *path* that the store's user owns, and ``fstat`` it.

        *path* must be in a directory already checked. A symbolic link is never
        followed and a FIFO never waited on. With ``O_CREAT``, a new file gets
        *file_mode*, less the umask's bits.

        :raises CorruptRecord: Something else is at *path*; the message says what.
        :raises FileNotFoundError: Nothing is at *path* (and no ``O_CREAT``).
        """
        try:
            fd = os.open(path, flags | _SAFELY, self.file_mode)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._not_a_file(exc, path) from None
        found = os.fstat(fd)
        if stat.S_ISREG(found.st_mode) and found.st_uid == self.uid:
            return fd, found
        os.close(fd)
        raise _wrong_file(found)

    def open_lock(self, shard: str) -> int:
        """Open the lock file of *shard*, made if missing, with the shard if need be.

        A lock file is checked (``fstat``) the first time only, as directories are: no
        one else can write its directory to put something else in its place.
        """
        lock = f"{shard}/{_LOCK_NAME}"
        if lock in self._checked:
            try:
                return os.open(lock, os.O_RDWR | os.O_CREAT | _SAFELY, self.file_mode)
            except OSError:
                # Gone with its shard (an operator's cleanup), or something else in
                # its place: both are judged again below.
                self._checked.difference_update((shard, lock))
        if shard not in self._checked:
            self._enter(shard, create=True)
        try:
            try:
                fd = self.open(lock, os.O_RDWR | os.O_CREAT)[0]
            except FileNotFoundError:
                self._checked.discard(shard)
                self._enter(shard, create=True)
                fd = self.open(lock, os.O_RDWR | os.O_CREAT)[0]
        except CorruptRecord as exc:
            name = lock[len(self.directory) + 1 :]
            raise Unsafe(f"lock file {name} is {exc}; refused") from None
        self._remember(lock)
        return fd

    def write(self, shard: str, name: str, data: bytes) -> None:
        """Replace the file *name* in *shard* through a temp file in the same directory."""
        temp = self._temp(shard, data)
        try:
            # os.replace is atomic on POSIX, so a reader sees the old file or the new
            # one, never half of each. It replaces a symbolic link, never its target.
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
        """Remove the file at *path* if it is there (a symbolic link, not its target).

        A directory there, which no file of the store is, is left where it is and
        logged: removing it could take whatever someone put in it, and the file it
        stands for reads as missing or corrupt anyway.
        """
        if not self._enter(os.path.dirname(path), create=False):
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            # Linux says EISDIR, other systems EPERM.
            if exc.errno not in (errno.EISDIR, errno.EPERM) or not os.path.isdir(path):
                raise
            name = os.path.basename(path)
            log.warning("left a directory where the store's file %s… should be", name[:8])
            return
        if self.fsync:
            self._sync_dir(os.path.dirname(path))

    # -- internals ----------------------------------------------------------------

    def _not_a_file(self, exc: OSError, path: str) -> Exception:
        """Return the :exc:`CorruptRecord` for an open of *path* that failed with *exc*.

        *exc* itself if it says nothing about what is at *path*.
        """
        reason = _NOT_A_FILE.get(exc.errno or 0)
        if reason is None and exc.errno == errno.EACCES and os.lstat(path).st_uid != self.uid:
            reason = "owned by another user"
        return exc if reason is None else CorruptRecord(reason)

    def _enter(self, directory: str, *, create: bool) -> bool:
        """Check *directory* of the store before its first use; whether it exists.

        With *create*, a missing one is made first.

        :raises Unsafe: It, or a level above it, fails the check.
        """
        if directory in self._checked:
            return True
        try:
            self._check(directory)
        except FileNotFoundError:
            if not create:
                return False
            self.mkdir(directory)
            self._check(directory)
        return True

    def _check(self, directory: str) -> None:
        """Check each level of *directory* below the store's not checked yet, with ``lstat``.

        :raises FileNotFoundError: A level is missing.
        """
        if not self._ready and not self.ready(create=False):
            raise FileNotFoundError(errno.ENOENT, "no store directory", self.directory)
        at = self.directory
        for part in directory[len(at) + 1 :].split("/") if directory != at else ():
            at = f"{at}/{part}"
            if at in self._checked:
                continue
            name = at[len(self.directory) + 1 :]
            self._judge(os.lstat(at), f"directory {name}")
            self._remember(at)

    def _usable(self, entry: os.DirEntry[str]) -> bool:
        """Whether a scan may enter the shard *entry*, which it logs if it may not."""
        if entry.path in self._checked:
            return True
        name = entry.path[len(self.directory) + 1 :]
        if not entry.is_dir(follow_symlinks=False):
            if entry.is_symlink():
                log.warning("file store: directory %s is a symbolic link; skipped", name)
            return False
        try:
            self._judge(entry.stat(follow_symlinks=False), f"directory {name}")
        except Unsafe as exc:
            log.warning("file store: %s; skipped", exc)
            return False
        self._remember(entry.path)
        return True

    def _remember(self, path: str) -> None:
        """Skip the check of *path*, which passed it, from now on."""
        if len(self._checked) >= _CHECKED_MAX:
            self._checked.clear()
            self._checked.add(self.directory)
        self._checked.add(path)

    def _judge(self, found: os.stat_result, what: str) -> None:
        """Refuse *found* unless it is a directory of the store's user that no one else writes."""
        mode = found.st_mode
        if not stat.S_ISDIR(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"
            raise Unsafe(f"{what} is {kind}; refused")
        if found.st_uid != self.uid:
            raise Unsafe(
                f"{what} belongs to uid {found.st_uid}, not to this process's uid {self.uid}; "
                "refused"
            )
        if mode & self._foreign_write:
            who = "others" if mode & 0o002 else "its group"
            raise Unsafe(
                f"{what} is writable by {who} (mode {stat.S_IMODE(mode):#o}); refused: "
                f"make it {self._dir_mode:#o}"
            )

    def _mkdir(self, path: str) -> None:
        """Make the directory *path* with the store's mode, unless something is there."""
        try:
            os.mkdir(path, self._dir_mode)
        except FileExistsError:
            return
        if self._dir_mode & 0o070:
            # The umask may have taken the group's bits, which file_mode grants.
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                os.fchmod(fd, self._dir_mode)
            finally:
                os.close(fd)

    def _mkdir_parents(self, path: str) -> None:
        """Make *path* and its missing parents, with the store's mode like its own."""
        try:
            self._mkdir(path)
        except FileNotFoundError:
            self._mkdir_parents(os.path.dirname(path))
            self._mkdir(path)

    def _temp(self, shard: str, data: bytes) -> str:
        """Write *data* to a new temp file in *shard*, creating the shard if missing."""
        self._enter(shard, create=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
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
                # The shard went away since its check (an operator's cleanup).
                self._checked.discard(shard)
                self._enter(shard, create=True)
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


def _wrong_file(found: os.stat_result) -> CorruptRecord:
    """Return the :exc:`CorruptRecord` for an open file that is not a regular file of ours."""
    if stat.S_ISREG(found.st_mode):
        return CorruptRecord("owned by another user")
    return CorruptRecord("not a regular file")


def _read_all(fd: int, size: int) -> bytes:
    """Return the open regular file *fd*, of *size* bytes when fstat was asked: one read,
    and more, to the end, only if that one came back short.

    The store replaces its files whole and never grows one in place, so a file holds
    what fstat measured (one that something else grew since is read as it was then).
    Not asking once more only to be told the file ended spares a system call a load.
    """
    blob = os.read(fd, size)
    if len(blob) < size:
        while more := os.read(fd, 65536):
            blob += more
    return blob

"""The file store at its edges: refresh slots, lock-free creates, races, durability.

Real files in tmp_path, real threads and processes; the store is never mocked.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers import python_child
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record, new_key


def _path_of(store: FileStore, key: str) -> Path:
    shards = [key[2 * i : 2 * i + 2] for i in range(store.shard_depth)]
    return Path(store.directory).joinpath(*shards, key)


# -- a create into a missing (dangling-symlink) directory fails, never spins ----------

_CREATE_INTO_DANGLING_CHILD = """
import sys
from wsgisession.errors import StoreError
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record, new_key

store = FileStore(sys.argv[1], shard_depth=int(sys.argv[2]))
try:
    store.save(new_key(), make_record(), expected_version=None)
except StoreError:
    print("store-error")
else:
    print("saved")
"""


@pytest.mark.parametrize("shard_depth", [0, 2])
def test_a_create_into_a_dangling_symlink_directory_raises_store_error(
    tmp_path: Path, shard_depth: int
) -> None:
    """The store's directory is a symlink to a volume that is not there (store down).

    The lock-free create writes its temp file before any lock: when the shard can't
    be made (mkdir meets the dangling link), it must raise StoreError like every
    other operation, not retry for ever. Run in a child, so a hang fails the test.
    """
    directory = tmp_path / "sessions"
    directory.symlink_to(tmp_path / "unmounted-volume" / "sessions")
    with python_child(_CREATE_INTO_DANGLING_CHILD, directory, shard_depth) as proc:
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("save() into a dangling-symlink directory hung instead of raising")
    assert out.strip() == "store-error", err


# -- a delete racing a lock-free create is ordered before or after it ---------------


def test_a_delete_racing_a_create_is_linearizable(tmp_path: Path) -> None:
    """A create that returned True and a delete that returned False leave the record.

    Create-then-delete returns True; delete-then-create leaves the record. A delete
    that found no file under the lock must not unlink one a lock-free create links
    in afterwards.
    """
    store = FileStore(tmp_path / "sessions")
    bad = 0
    for _ in range(1500):
        key = new_key()
        results: dict[str, bool] = {}
        barrier = threading.Barrier(2)

        def create(
            key: str = key,
            barrier: threading.Barrier = barrier,
            results: dict[str, bool] = results,
        ) -> None:
            barrier.wait()
            results["create"] = store.save(key, make_record(b"new"), expected_version=None)

        def delete(
            key: str = key,
            barrier: threading.Barrier = barrier,
            results: dict[str, bool] = results,
        ) -> None:
            barrier.wait()
            results["delete"] = store.delete(key)

        threads = [threading.Thread(target=create), threading.Thread(target=delete)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if results["create"] and not results["delete"] and store.load(key) is None:
            bad += 1
    assert bad == 0, f"{bad} acknowledged creates silently undone by a delete saying False"


# -- coverage: refreshes, saves and lock-free readers in several processes ----------

_SAVER_CHILD = """
import sys, time
from dataclasses import replace
from wsgisession.stores.file import FileStore

store, key, until = FileStore(sys.argv[1]), sys.argv[2], float(sys.argv[3])
base = float(sys.argv[4])
saves = 0
while time.time() < until:
    current = store.load(key)
    if current is None:
        sys.exit("saver: record vanished")
    version = current.version + 1
    # A save sets an expiry of its own, sometimes below the refreshed one.
    expires = base + (version % 7)
    record = replace(current, version=version, expires_at=expires,
                     data=b"%d:%r" % (version, expires))
    if store.save(key, record, expected_version=current.version):
        saves += 1
print(saves)
"""

_REFRESHER_CHILD = """
import sys, time
from wsgisession.stores.file import FileStore

store, key, until = FileStore(sys.argv[1]), sys.argv[2], float(sys.argv[3])
lost = 0
while time.time() < until:
    current = store.load(key)
    if current is None:
        sys.exit("refresher: record vanished")
    wanted = current.expires_at + 0.5
    if not store.refresh(key, wanted, current.last_seen + 0.5):
        sys.exit("refresher: refresh found no record")
    after = store.load(key)
    if after is None:
        sys.exit("refresher: record vanished after a refresh")
    if after.version == current.version and after.expires_at < wanted:
        lost += 1
print(lost)
"""

_READER_CHILD = """
import math, sys, time
from wsgisession.stores.file import FileStore

store, key, until = FileStore(sys.argv[1]), sys.argv[2], float(sys.argv[3])
last = None
reads = 0
while time.time() < until:
    record = store.load(key)
    if record is None:
        sys.exit("reader: a live record read as missing or expired")
    version_s, expires_s = record.data.split(b":")
    saved_expiry = float(expires_s)
    if int(version_s) != record.version:
        sys.exit("reader: data of one version with the header of another")
    if not math.isfinite(record.expires_at) or record.expires_at < saved_expiry:
        sys.exit(f"reader: expiry {record.expires_at!r} below the saved {saved_expiry!r}")
    if last is not None:
        if record.version < last[0]:
            sys.exit("reader: version went back")
        if record.version == last[0] and record.expires_at < last[1]:
            sys.exit(f"reader: expiry went back {last[1]!r} -> {record.expires_at!r}")
    last = (record.version, record.expires_at)
    reads += 1
print(reads)
"""


def test_refreshes_saves_and_readers_in_processes_never_go_back(tmp_path: Path) -> None:
    """Readers take no lock while refreshes write slots in place and saves replace files.

    Per version, the expiry a reader sees never goes back and never falls below what
    that version's save wrote; no reader ever sees the live record missing; no
    acknowledged refresh is lost while the version stays the same.
    """
    directory = tmp_path / "sessions"
    store = FileStore(directory)
    key = new_key()
    base = time.time() + 3600
    assert store.save(key, make_record(b"1:%r" % base, ttl=3600), expected_version=None)
    # make_record's expiry is "now + 3600", written as data; align the header with it.
    current = store.load(key)
    assert current is not None
    first = replace(current, version=2, expires_at=base, data=b"2:%r" % base)
    assert store.save(key, first, expected_version=1)

    until = time.time() + 3.0
    procs = [
        python_child(_SAVER_CHILD, directory, key, until, base),
        python_child(_REFRESHER_CHILD, directory, key, until),
        python_child(_REFRESHER_CHILD, directory, key, until),
        *[python_child(_READER_CHILD, directory, key, until) for _ in range(3)],
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(int(out))
    saves, lost_a, lost_b, *reads = outputs
    assert saves > 0 and min(reads) > 0
    assert lost_a == lost_b == 0
    assert not list(directory.rglob(".tmp-*"))


# -- coverage: lock-free creates racing locked creates of a user's record ----------


def test_lock_free_and_locked_creates_have_one_winner_and_a_true_index(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "sessions")
    for _ in range(50):
        key = new_key()
        won: list[int] = []
        barrier = threading.Barrier(8)

        def create(
            n: int, key: str = key, barrier: threading.Barrier = barrier, won: list[int] = won
        ) -> None:
            barrier.wait()
            user = "ann" if n % 2 else None  # odd: locked path; even: lock-free
            if store.save(key, make_record(b"%d" % n, user_id=user), expected_version=None):
                won.append(n)

        threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"%d" % won[0]
        listed = [k for k, _ in store.user_records("ann")]
        assert (key in listed) == (won[0] % 2 == 1)
        assert store.delete(key)
    assert store.user_records("ann") == []
    assert not list((tmp_path / "sessions").rglob(".tmp-*"))


# -- coverage: fsync=true flushes what each kind of write changed -----------------


def test_fsync_flushes_every_new_file_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Observes os.fsync (it still runs); the store itself is real."""
    store = FileStore(tmp_path / "sessions", fsync=True)
    flushed: list[tuple[int, int, bool]] = []  # (device, inode, is_dir)
    real = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        flushed.append((st.st_dev, st.st_ino, os.path.stat.S_ISDIR(st.st_mode)))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)

    def ident(path: Path) -> tuple[int, int, bool]:
        st = path.stat()
        return (st.st_dev, st.st_ino, path.is_dir())

    # A lock-free create: the record's inode and its shard directory.
    key = new_key()
    assert store.save(key, make_record(b"a"), expected_version=None)
    path = _path_of(store, key)
    assert ident(path) in flushed and ident(path.parent) in flushed

    # A regenerate with a user: the new record, both shard dirs, the index file.
    flushed.clear()
    new = new_key()
    assert store.save(
        new,
        make_record(b"b", user_id="u"),
        expected_version=None,
        replaces=key,
        replaces_version=1,
    )
    new_path = _path_of(store, new)
    index = store._users.path("u")
    assert ident(new_path) in flushed and ident(new_path.parent) in flushed
    assert ident(path.parent) in flushed  # the unlink of the old record
    assert ident(Path(index)) in flushed and ident(Path(index).parent) in flushed

    # A delete: the directory entry.
    flushed.clear()
    assert store.delete(new)
    assert ident(new_path.parent) in flushed

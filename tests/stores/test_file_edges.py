"""The file store at its edges: refresh slots, lock-free creates, races, durability.

Also the save lock between processes (timeouts, a holder killed) and tombstones on disk.

Real files in tmp_path, real threads and processes; the store is never mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers import CHILD_ENV, python_child
from wsgisession.errors import StoreError
from wsgisession.stores import _file_format as file_format
from wsgisession.stores.base import LockTimeout, Record
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record, make_tombstone, new_key


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


# -- the save lock: flock between processes, timeouts, a holder killed --------------

_LOCK_HOLDER_CHILD = """
import sys
from dataclasses import replace
from wsgisession.stores.file import FileStore

store = FileStore(sys.argv[1])

def build(current):
    print("holding", flush=True)
    sys.stdin.readline()  # killed here, with the lock held
    return replace(current, version=current.version + 1, data=b"child")

store.save_locked(sys.argv[2], build, timeout=30)
"""


def _holding(directory: Path, key: str) -> subprocess.Popen[str]:
    """A child process holding *key*'s save lock until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER_CHILD, str(directory), key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "holding\n", proc.stderr.read() if proc.stderr else ""
    return proc


def test_a_lock_held_by_a_killed_process_times_out_then_is_free(tmp_path: Path) -> None:
    """The kernel drops a dead holder's flock; the wait given up on leaves no lock behind."""
    directory = tmp_path / "sessions"
    store = FileStore(directory)
    key = new_key()
    assert store.save(key, make_record(b"before"), expected_version=None)

    def never(current: Record) -> Record:
        raise AssertionError("built without the lock")

    with _holding(directory, key) as proc:
        with pytest.raises(LockTimeout) as info:
            store.save_locked(key, never, timeout=0.2)
        message = str(info.value)
        assert key[:8] in message and key not in message
        assert str(directory) in message
        proc.kill()
        proc.communicate()

    loaded = store.load(key)
    assert loaded is not None and (loaded.data, loaded.version) == (b"before", 1)
    # The timed-out wait's thread takes the lock when the child dies and lets it go.
    written = store.save_locked(key, lambda c: replace(c, version=2, data=b"after"), timeout=30)
    assert written is not None
    loaded = store.load(key)
    assert loaded is not None and (loaded.data, loaded.version) == (b"after", 2)


def test_a_locked_save_waits_for_a_lock_another_process_holds(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = FileStore(directory)
    key = new_key()
    assert store.save(key, make_record(b"before"), expected_version=None)
    outcome: list[Record | None] = []
    with _holding(directory, key) as proc:
        waiter = threading.Thread(
            target=lambda: outcome.append(
                store.save_locked(key, lambda c: replace(c, version=2, data=b"mine"), timeout=60)
            )
        )
        waiter.start()
        waiter.join(0.3)
        assert not outcome, "a locked save got a lock another process held"
        proc.kill()
        proc.communicate()
    waiter.join(60)
    assert len(outcome) == 1 and outcome[0] is not None
    loaded = store.load(key)
    assert loaded is not None and (loaded.data, loaded.version) == (b"mine", 2)


_PLAIN_SAVER_CHILD = """
import sys
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record

store = FileStore(sys.argv[1])
print("saving", flush=True)
print(store.save(sys.argv[2], make_record(b"rival", version=2), expected_version=1))
"""


def test_a_plain_save_in_another_process_waits_for_the_lock_and_loses(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = FileStore(directory)
    key = new_key()
    assert store.save(key, make_record(b"before"), expected_version=None)
    children: list[subprocess.Popen[str]] = []

    def build(current: Record) -> Record:
        proc = python_child(_PLAIN_SAVER_CHILD, directory, key)
        children.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "saving\n"
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.5)  # blocked on the shard's flock, which this build holds
        return replace(current, version=2, data=b"holder")

    assert store.save_locked(key, build, timeout=30) is not None
    out, err = children[0].communicate(timeout=60)
    assert (children[0].returncode, out) == (0, "False\n"), err
    loaded = store.load(key)
    assert loaded is not None and loaded.data == b"holder"


def test_an_oserror_from_build_is_not_turned_into_a_store_error(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "sessions")
    key = new_key()
    assert store.save(key, make_record(b"before"), expected_version=None)

    def build(current: Record) -> Record:
        raise FileNotFoundError(2, "the application's own file")

    with pytest.raises(FileNotFoundError) as info:
        store.save_locked(key, build, timeout=30)
    assert not isinstance(info.value, StoreError)
    assert store.save(key, make_record(b"next", version=2), expected_version=1)


_MIXED_WRITERS_CHILD = """
import json, sys, threading, time
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record

store = FileStore(sys.argv[1])
key, name, writes, threads = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
start = float(sys.argv[6])
errors = []

def bumped(current, field, i):
    data = json.loads(current.data)
    data[field] = i
    return make_record(json.dumps(data).encode(), version=current.version + 1)

def writer(n):
    field = f"{name}t{n}"
    try:
        time.sleep(max(0.0, start - time.time()))  # start together
        for i in range(writes):
            current = store.load(key)
            if not store.save(key, bumped(current, field, i), expected_version=current.version):
                if store.save_locked(key, lambda c: bumped(c, field, i), timeout=60) is None:
                    raise AssertionError("the locked save wrote nothing")
    except BaseException as exc:
        errors.append(exc)

pool = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
for t in pool:
    t.start()
for t in pool:
    t.join()
if errors:
    raise errors[0]
"""


def test_plain_and_locked_saves_in_processes_lose_nothing(tmp_path: Path) -> None:
    """One compare-and-set, then the lock: each write lands, whichever process wins."""
    directory = tmp_path / "sessions"
    store = FileStore(directory)
    key = new_key()
    assert store.save(key, make_record(b"{}"), expected_version=None)
    processes, threads, writes = 4, 4, 10
    start = time.time() + 1.0
    procs = [
        python_child(_MIXED_WRITERS_CHILD, directory, key, f"p{n}", writes, threads, start)
        for n in range(processes)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    loaded = store.load(key)
    assert loaded is not None
    expected = {f"p{p}t{t}": writes - 1 for p in range(processes) for t in range(threads)}
    assert json.loads(loaded.data) == expected
    assert loaded.version == 1 + processes * threads * writes


# -- tombstones on disk -------------------------------------------------------------


def test_a_tombstone_replaces_the_old_file_and_is_not_counted(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "sessions")
    old, new = new_key(), new_key()
    assert store.save(old, make_record(b"old", user_id="ann"), expected_version=None)
    stone = make_tombstone()
    assert store.save(
        new,
        make_record(b"new", user_id="ann"),
        expected_version=None,
        replaces=old,
        replaces_version=1,
        tombstone=stone,
    )
    path = _path_of(store, old)
    assert file_format.decode_record(path.read_bytes()) == stone
    assert file_format.header(path.read_bytes()) == (stone.expires_at, True)
    assert store.count() == 1
    assert [key for key, _ in store.user_records("ann")] == [new]
    before = path.read_bytes()
    assert not store.refresh(old, stone.expires_at + 60, stone.last_seen + 60)
    assert path.read_bytes() == before, "a refresh wrote into a tombstone"
    assert not store.delete(old)
    assert not path.exists()


def test_an_expired_tombstone_is_cleaned_up(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "sessions")
    old, new = new_key(), new_key()
    assert store.save(old, make_record(b"old"), expected_version=None)
    stone = make_tombstone(ttl=-5)
    assert store.save(new, make_record(), expected_version=None, replaces=old, tombstone=stone)
    assert _path_of(store, old).exists()
    assert store.cleanup() == 1
    assert not _path_of(store, old).exists()
    assert store.load(new) is not None


def test_a_locked_move_leaves_a_tombstone_across_shards(tmp_path: Path) -> None:
    """The two shards' locks are taken in one sorted order, as a regenerate takes them."""
    store = FileStore(tmp_path / "sessions", shard_depth=1)
    old = new_key()
    new = new_key()
    while new[:2] == old[:2]:
        new = new_key()
    assert store.save(old, make_record(b"old", user_id="ann"), expected_version=None)
    stone = make_tombstone()
    written = store.save_locked(
        old,
        lambda current: replace(current, version=1, data=b"moved"),
        timeout=30,
        moves_to=new,
        tombstone=stone,
    )
    assert written is not None
    assert file_format.decode_record(_path_of(store, old).read_bytes()) == stone
    loaded = store.load(new)
    assert loaded is not None and (loaded.data, loaded.user_id) == (b"moved", "ann")
    assert [key for key, _ in store.user_records("ann")] == [new]
    assert store.count() == 1

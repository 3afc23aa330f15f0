"""The file store under threads and processes on one directory: lock-free creates with
one winner, compare-and-set serialized by ``flock``, the save lock between processes
(waits, timeouts, a holder killed), refreshes racing saves, and the purge lease.

Real files in tmp_path, real threads and processes; the store is never mocked.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers import (
    CHILD_ENV,
    PATIENCE,
    counter,
    finish,
    key_of,
    make_client,
    merging_writer_code,
    python_child,
    temp_files,
)
from wsgisession.errors import StoreError
from wsgisession.stores.base import LockTimeout, Record
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record, new_key
from wsgisession.testing._helpers import THREADS, run_threads

# -- creates ---------------------------------------------------------------------------


def test_a_create_takes_no_lock(file_store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a create of a new key must not lock")

    monkeypatch.setattr(file_store._locks, "hold", refused)
    key = new_key()
    assert file_store.save(key, make_record(b"new"), expected_version=None)
    loaded = file_store.load(key)
    assert loaded is not None and loaded.data == b"new"
    assert temp_files(Path(file_store.directory)) == []


@pytest.mark.parametrize("expired", [False, True], ids=["absent", "over-an-expired-record"])
def test_creates_racing_in_threads_have_one_winner(expired: bool, file_store: FileStore) -> None:
    key = new_key()
    if expired:
        assert file_store.save(key, make_record(b"old", ttl=-5), expected_version=None)
    won: list[int] = []

    def create(n: int) -> None:
        if file_store.save(key, make_record(b"%d" % n), expected_version=None):
            won.append(n)

    run_threads(THREADS, create)
    assert len(won) == 1
    loaded = file_store.load(key)
    assert loaded is not None and loaded.data == b"%d" % won[0]
    assert temp_files(Path(file_store.directory)) == []


def test_creates_without_hard_links_take_the_lock(
    file_store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some FUSE and FAT file systems refuse os.link; creates must still compare and set."""

    def no_links(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    key = new_key()
    assert file_store.save(key, make_record(b"first"), expected_version=None)
    assert not file_store.save(key, make_record(b"second"), expected_version=None)
    loaded = file_store.load(key)
    assert loaded is not None and loaded.data == b"first"
    assert temp_files(Path(file_store.directory)) == []


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

        def race(n: int, key: str = key, results: dict[str, bool] = results) -> None:
            if n == 0:
                results["create"] = store.save(key, make_record(b"new"), expected_version=None)
            else:
                results["delete"] = store.delete(key)

        run_threads(2, race)
        if results["create"] and not results["delete"] and store.load(key) is None:
            bad += 1
    assert bad == 0, f"{bad} acknowledged creates silently undone by a delete saying False"


def test_lock_free_and_locked_creates_have_one_winner_and_a_true_index(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "sessions")
    for _ in range(50):
        key = new_key()
        won: list[int] = []

        def create(n: int, key: str = key, won: list[int] = won) -> None:
            user = "ann" if n % 2 else None  # odd: locked path; even: lock-free
            if store.save(key, make_record(b"%d" % n, user_id=user), expected_version=None):
                won.append(n)

        run_threads(8, create)
        assert len(won) == 1
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"%d" % won[0]
        listed = [k for k, _ in store.user_records("ann")]
        assert (key in listed) == (won[0] % 2 == 1)
        assert store.delete(key)
    assert store.user_records("ann") == []
    assert not list((tmp_path / "sessions").rglob(".tmp-*"))


# -- refreshes racing refreshes and saves ---------------------------------------------


def test_refreshes_racing_in_threads_keep_the_latest_expiry(file_store: FileStore) -> None:
    key = new_key()
    record = make_record()
    assert file_store.save(key, record, expected_version=None)
    offsets = random.Random(1).sample(range(1, 1000), THREADS)

    def refresh(n: int) -> None:
        for step in range(20):
            later = offsets[n] + step
            assert file_store.refresh(key, record.expires_at + later, record.last_seen + later)

    run_threads(THREADS, refresh)
    loaded = file_store.load(key)
    assert loaded is not None
    assert loaded.expires_at == record.expires_at + max(offsets) + 19


_SAVER_CHILD = """
import sys, time
from dataclasses import replace
from wsgisession.stores.file import FileStore

store, key, until = FileStore(sys.argv[1]), sys.argv[2], time.time() + float(sys.argv[3])
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

store, key, until = FileStore(sys.argv[1]), sys.argv[2], time.time() + float(sys.argv[3])
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

store, key, until = FileStore(sys.argv[1]), sys.argv[2], time.time() + float(sys.argv[3])
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

    # Each child runs this long from when it has started: starting six interpreters
    # can take seconds on a loaded machine, which a shared deadline would eat.
    seconds = 3.0
    procs = [
        python_child(_SAVER_CHILD, directory, key, seconds, base),
        python_child(_REFRESHER_CHILD, directory, key, seconds),
        python_child(_REFRESHER_CHILD, directory, key, seconds),
        *[python_child(_READER_CHILD, directory, key, seconds) for _ in range(3)],
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


# -- compare-and-set and the save lock between processes ---------------------------------


_MERGING_WRITER_CHILD = merging_writer_code(
    "from wsgisession.stores.file import FileStore\nstore = FileStore(sys.argv[1])"
)


def test_processes_merging_disjoint_keys_lose_nothing(file_store: FileStore, root: Path) -> None:
    """flock serializes compare-and-set between processes as it does between threads."""
    key = new_key()
    assert file_store.save(key, make_record(b"{}"), expected_version=None)
    processes, writes = 6, 30
    start = time.time() + 1.0
    procs = [
        python_child(_MERGING_WRITER_CHILD, root, key, f"p{n}", writes, start)
        for n in range(processes)
    ]
    for proc in procs:
        finish(proc)
    loaded = file_store.load(key)
    assert loaded is not None
    assert json.loads(loaded.data) == {f"p{n}": writes - 1 for n in range(processes)}
    assert loaded.version == 1 + processes * writes


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


def test_a_save_through_the_middleware_waits_for_a_stuck_lock_only_save_timeout(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "sessions"
    client, middleware = make_client({"/": counter}, store=f"file://{directory}", save_timeout=1)
    client.get("/")
    key = key_of(client)
    failures: list[BaseException] = []

    def save() -> None:
        try:
            client.get("/")
        except StoreError as exc:
            failures.append(exc)

    proc = _holding(directory, key)  # a worker stopped while it held the lock
    try:
        saver = threading.Thread(target=save)
        saver.start()
        saver.join(PATIENCE)
        assert not saver.is_alive(), "the save waited for the lock beyond save_timeout"
    finally:
        proc.kill()
        proc.communicate()
    assert len(failures) == 1 and "save_timeout (1 s)" in str(failures[0])
    assert middleware.store.load(key) is not None


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
import json, sys, time
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record
from wsgisession.testing._helpers import run_threads

store = FileStore(sys.argv[1])
key, name, writes, threads = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def bumped(current, field, i):
    data = json.loads(current.data)
    data[field] = i
    return make_record(json.dumps(data).encode(), version=current.version + 1)

def writer(n):
    field = f"{name}t{n}"
    for i in range(writes):
        current = store.load(key)
        if not store.save(key, bumped(current, field, i), expected_version=current.version):
            if store.save_locked(key, lambda c: bumped(c, field, i), timeout=60) is None:
                raise AssertionError("the locked save wrote nothing")

time.sleep(max(0.0, float(sys.argv[6]) - time.time()))  # start with the other processes
run_threads(threads, writer)
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


def test_cleanup_rechecks_a_record_under_the_lock(
    file_store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session re-created between cleanup's scan and its unlink must survive."""
    key = new_key()
    assert file_store.save(key, make_record(b"old", ttl=-5), expected_version=None)
    real = file_store._tree.head
    raced: list[str] = []

    def scan_then_race(shard: str, name: str, size: int) -> bytes:
        head = real(shard, name, size)
        if not raced:
            raced.append(key)
            assert file_store.save(key, make_record(b"new"), expected_version=None)
        return head

    monkeypatch.setattr(file_store._tree, "head", scan_then_race)
    assert file_store.cleanup() == 0
    loaded = file_store.load(key)
    assert loaded is not None and loaded.data == b"new"


# -- the purge lease ---------------------------------------------------------------------


_PURGE_CLAIM_CHILD = """
import sys, time
from wsgisession.stores.file import FileStore

store = FileStore(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # claim together
print(store.claim_purge(3600))
"""


def test_claim_purge_is_won_by_one_process(root: Path) -> None:
    start = time.time() + 1.0
    procs = [python_child(_PURGE_CLAIM_CHILD, root, start) for _ in range(6)]
    answers = sorted(finish(proc).strip() for proc in procs)
    assert answers == ["False"] * 5 + ["True"]


def test_claim_purge_lease(file_store: FileStore, root: Path) -> None:
    assert file_store.claim_purge(60)
    assert not file_store.claim_purge(60)
    assert file_store.claim_purge(0)
    lease = root / ".purge"
    lease.write_text(repr(time.time() - 120))
    assert file_store.claim_purge(60)
    assert not file_store.claim_purge(60)
    lease.write_text("garbage")
    assert file_store.claim_purge(60)
    lease.write_text(repr(time.time() + 3600))  # the clock was set back
    assert file_store.claim_purge(60)

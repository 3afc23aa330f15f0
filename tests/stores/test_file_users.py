"""The file store's user index: one file per user, listing the keys of the user's
sessions with their expiries, kept exact under threads and processes, pruned as it is
read and written, so that its upkeep does not grow with the user's sessions.
"""

from __future__ import annotations

import hashlib
import logging
import random
import stat
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import (
    communicate_within,
    finish,
    python_child,
    record_files,
    record_path,
)
from wsgisession.errors import StoreError
from wsgisession.stores._file_users import decode_index, encode_index
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record, new_key


def _index_path(store: FileStore, user_id: str) -> Path:
    digest = hashlib.sha256(user_id.encode("utf-8")).hexdigest()
    shards = [digest[2 * i : 2 * i + 2] for i in range(store.shard_depth)]
    return Path(store.directory, "users", *shards, digest)


def _indexed(store: FileStore, user_id: str) -> set[str]:
    """The keys the index file of *user_id* lists, read straight from the file."""
    path = _index_path(store, user_id)
    if not path.exists():
        return set()
    owner, entries = decode_index(path.read_bytes())
    assert owner == user_id
    return set(entries)


def _listed(store: FileStore, user_id: str) -> set[str]:
    return {key for key, _ in store.user_records(user_id)}


@pytest.mark.parametrize("depth", [0, 2])
def test_index_file_layout(depth: int, root: Path) -> None:
    """users/<shards of sha256(user id)>/<sha256 hex>, holding the user id and the keys."""
    store = FileStore(root, shard_depth=depth, file_mode=0o640)
    keys = {new_key() for _ in range(3)}
    for key in keys:
        assert store.save(key, make_record(user_id="ann"), expected_version=None)
    digest = hashlib.sha256(b"ann").hexdigest()
    path = root.joinpath("users", *[digest[2 * i : 2 * i + 2] for i in range(depth)], digest)
    assert [p for p in (root / "users").rglob("*") if p.is_file() and p.name[0] != "."] == [path]
    owner, entries = decode_index(path.read_bytes())
    assert (owner, set(entries)) == ("ann", keys)
    assert all(entries[key] == store.load(key).expires_at for key in keys)  # type: ignore[union-attr]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert store.count() == 3  # the index is not counted as records
    backwards = dict(sorted(entries.items(), reverse=True))
    assert path.read_bytes() == encode_index("ann", backwards)  # sorted
    for key in keys:
        assert store.delete(key)
    assert not path.exists()  # an index left empty is removed
    assert record_files(root) == []


def test_index_follows_saves_user_changes_and_regenerate(file_store: FileStore) -> None:
    key, new = new_key(), new_key()
    assert file_store.save(key, make_record(user_id="ann"), expected_version=None)
    assert _indexed(file_store, "ann") == {key}
    assert file_store.save(key, make_record(version=2, user_id="bob"), expected_version=1)
    assert (_indexed(file_store, "ann"), _indexed(file_store, "bob")) == (set(), {key})
    assert not _index_path(file_store, "ann").exists()
    assert file_store.save(new, make_record(user_id="bob"), expected_version=None, replaces=key)
    assert _indexed(file_store, "bob") == {new}
    assert file_store.save(new, make_record(version=2), expected_version=1)
    assert not _index_path(file_store, "bob").exists()


def test_user_ids_that_differ_only_in_encoding_details_get_their_own_index(
    file_store: FileStore,
) -> None:
    users = ["ann", "Ann", "ann\n", "\u00e9", "e\u0301", "a" * 1000, "\ud800"]
    keys = {user: new_key() for user in users[:-1]}
    for user, key in keys.items():
        assert file_store.save(key, make_record(user_id=user), expected_version=None)
    for user, key in keys.items():
        assert _indexed(file_store, user) == {key}
        assert _listed(file_store, user) == {key}
    assert file_store.user_records(users[-1]) == []  # a lone surrogate looks up nothing


def test_a_stale_entry_is_pruned_on_read(file_store: FileStore) -> None:
    live, expired, gone, moved, corrupt = (new_key() for _ in range(5))
    for key in (live, gone, moved, corrupt):
        assert file_store.save(key, make_record(user_id="ann"), expected_version=None)
    assert file_store.save(expired, make_record(user_id="ann", ttl=-5), expected_version=None)
    # Behind the store's back: a record vanishes, one turns up as another user's, one rots.
    record_path(file_store, gone).unlink()
    blob = record_path(file_store, corrupt).read_bytes()
    record_path(file_store, corrupt).write_bytes(blob[:-1])
    other = FileStore(file_store.directory, shard_depth=0)  # writes elsewhere, no index
    assert other.save(moved, make_record(user_id="bob"), expected_version=None)
    record_path(other, moved).replace(record_path(file_store, moved))
    assert _indexed(file_store, "ann") == {live, expired, gone, moved, corrupt}

    assert _listed(file_store, "ann") == {live}
    assert _indexed(file_store, "ann") == {live}


def test_an_expired_entry_is_pruned_when_the_users_index_is_next_written(
    file_store: FileStore,
) -> None:
    """The index of a user who never reads it stays as small as the user's sessions."""
    for _ in range(5):
        key = new_key()
        assert file_store.save(key, make_record(user_id="ann", ttl=-5), expected_version=None)
        assert _indexed(file_store, "ann") == {key}  # the ones before are dropped
    live = new_key()
    assert file_store.save(live, make_record(user_id="ann"), expected_version=None)
    assert _indexed(file_store, "ann") == {live}


def test_an_expired_entry_stays_while_its_record_is_locked(file_store: FileStore) -> None:
    """A refresh holding the record's lock may be about to revive it: pruning waits."""
    key = new_key()
    assert file_store.save(key, make_record(user_id="ann", ttl=-5), expected_version=None)
    other = FileStore(file_store.directory)  # its own lock file descriptors
    with other._locked(key):
        assert file_store.user_records("ann") == []
        assert _indexed(file_store, "ann") == {key}
    assert file_store.user_records("ann") == []
    assert _indexed(file_store, "ann") == set()


def test_cleanup_prunes_the_index(file_store: FileStore) -> None:
    live = new_key()
    assert file_store.save(live, make_record(user_id="ann"), expected_version=None)
    for _ in range(4):
        assert file_store.save(
            new_key(), make_record(user_id="ann", ttl=-5), expected_version=None
        )
    for _ in range(3):
        assert file_store.save(
            new_key(), make_record(user_id="bob", ttl=-5), expected_version=None
        )
    gone = new_key()
    assert file_store.save(gone, make_record(user_id="cyd"), expected_version=None)
    record_path(file_store, gone).unlink()  # a crash, or an operator: the sweep catches it

    assert file_store.cleanup() == 7

    assert _indexed(file_store, "ann") == {live}
    assert not _index_path(file_store, "bob").exists()
    assert not _index_path(file_store, "cyd").exists()


def test_cleanup_removes_an_empty_index_file(file_store: FileStore) -> None:
    key = new_key()
    assert file_store.save(key, make_record(user_id="ann"), expected_version=None)
    path = _index_path(file_store, "ann")
    path.write_bytes(encode_index("ann", {}))
    assert file_store.cleanup() == 0
    assert not path.exists()


def test_a_limited_cleanup_that_hits_its_limit_leaves_the_sweep_for_later(
    file_store: FileStore,
) -> None:
    gone = new_key()
    assert file_store.save(gone, make_record(user_id="ann"), expected_version=None)
    record_path(file_store, gone).unlink()
    assert file_store.save(new_key(), make_record(ttl=-5), expected_version=None)
    assert file_store.cleanup(limit=1) == 1
    assert _indexed(file_store, "ann") == {gone}
    assert file_store.cleanup(limit=1) == 0
    assert not _index_path(file_store, "ann").exists()


_INDEX_CORRUPTIONS = [
    pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
    pytest.param(lambda b: b"", id="empty"),
    pytest.param(lambda b: random.Random(0).randbytes(len(b)), id="random-bytes"),
    pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 1]), id="flipped-bit"),
    pytest.param(lambda b: b[:4] + bytes([99]) + b[5:], id="future-format"),
    pytest.param(
        lambda b: encode_index("bob", {new_key(): time.time() + 60}), id="another-users-index"
    ),
]


@pytest.mark.parametrize("corrupt", _INDEX_CORRUPTIONS)
def test_a_corrupt_index_is_logged_treated_as_empty_and_rebuilt(
    corrupt: Callable[[bytes], bytes], file_store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_key()
    assert file_store.save(key, make_record(user_id="ann"), expected_version=None)
    path = _index_path(file_store, "ann")
    path.write_bytes(corrupt(path.read_bytes()))
    caplog.set_level(logging.WARNING, logger="wsgisession")

    assert file_store.user_records("ann") == []

    lines = [r.getMessage() for r in caplog.records if r.name == "wsgisession"]
    assert len(lines) == 1
    assert path.name[:8] in lines[0] and "ann" not in lines[0]
    # The next save of the user's session links it again; so does a new login.
    assert file_store.save(key, make_record(version=2, user_id="ann"), expected_version=1)
    other = new_key()
    assert file_store.save(other, make_record(user_id="ann"), expected_version=None)
    assert _listed(file_store, "ann") == {key, other}
    assert _indexed(file_store, "ann") == {key, other}


def test_cleanup_removes_a_corrupt_index(
    file_store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    assert file_store.save(new_key(), make_record(user_id="ann"), expected_version=None)
    path = _index_path(file_store, "ann")
    path.write_bytes(b"garbage")
    caplog.set_level(logging.WARNING, logger="wsgisession")
    assert file_store.cleanup() == 0
    assert not path.exists()
    assert any("user index" in r.getMessage() for r in caplog.records)


def test_user_records_on_a_broken_directory_is_a_store_error(root: Path) -> None:
    root.write_text("not a directory")
    with pytest.raises(StoreError) as info:
        FileStore(root).user_records("ann")
    assert isinstance(info.value.__cause__, OSError)


def test_reading_the_index_of_an_absent_store_creates_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "a" / "b")
    assert store.user_records("ann") == []
    assert list(tmp_path.iterdir()) == []


_USER_CHURN_CHILD = """
import sys, time
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record, new_key

store = FileStore(sys.argv[1], shard_depth=int(sys.argv[2]))
n, rounds = int(sys.argv[3]), int(sys.argv[4])
time.sleep(max(0.0, float(sys.argv[5]) - time.time()))  # start together
for i in range(rounds):
    key = new_key()
    assert store.save(key, make_record(user_id="ann"), expected_version=None)
    step = (n + i) % 4
    if step == 1:
        assert store.delete(key)
        continue
    if step == 2:  # regenerate
        old, key = key, new_key()
        assert store.save(key, make_record(user_id="ann"), expected_version=None, replaces=old)
    if step == 3:  # another user takes the session over
        assert store.save(key, make_record(version=2, user_id="bob"), expected_version=1)
        print("bob", key)
        continue
    print("ann", key)
"""


@pytest.mark.parametrize("depth", [0, 1])
def test_processes_logging_one_user_in_and_out_leave_the_index_exact(
    depth: int, root: Path
) -> None:
    """flock keeps the index exact between processes as it does between threads."""
    processes, rounds = 6, 24
    start = time.time() + 1.0
    procs = [
        python_child(_USER_CHURN_CHILD, root, depth, n, rounds, start) for n in range(processes)
    ]
    kept: dict[str, set[str]] = {"ann": set(), "bob": set()}
    for proc in procs:
        for line in finish(proc).splitlines():
            user, key = line.split()
            kept[user].add(key)
    assert sum(map(len, kept.values())) == processes * rounds * 3 // 4
    store = FileStore(root, shard_depth=depth)
    for user, keys in kept.items():
        assert _indexed(store, user) == keys  # the file itself, before any pruning read
        assert _listed(store, user) == keys


_CROSSING_REGENERATE_CHILD = """
import sys, threading
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record, new_key
from wsgisession.testing._helpers import run_threads

store = FileStore(sys.argv[1], shard_depth=1)
threads, rounds = int(sys.argv[2]), int(sys.argv[3])
users = ["ann", "bob"]
barrier = threading.Barrier(threads + 1)
final = {}

def key_in(prefix):
    while not (key := new_key()).startswith(prefix):
        pass
    return key

def regenerate(n):
    # Even threads hop from shard 1 to shard e and back, odd ones the other way, and
    # every hop hands the session to the other user: each save takes two record
    # locks and two user locks that the neighbouring thread wants in the other order.
    shards = ["1", "e"] if n % 2 else ["e", "1"]
    key = key_in(shards[0])
    record = make_record(user_id=users[n % 2])
    assert store.save(key, record, expected_version=None)
    barrier.wait()
    for i in range(rounds):
        new = key_in(shards[(i + 1) % 2])
        record = make_record(user_id=users[(n + i + 1) % 2])
        assert store.save(new, record, expected_version=None, replaces=key)
        key = new
    final[key] = record.user_id

def housekeeping():
    barrier.wait()
    for _ in range(rounds // 4):
        store.cleanup()
        store.user_records("ann")
        store.user_records("bob")

run_threads(threads + 1, lambda n: housekeeping() if n == threads else regenerate(n))
for key, user in final.items():
    print(user, key)
"""


def test_crossing_regenerates_in_threads_do_not_deadlock(root: Path) -> None:
    """Record locks first, then user locks, each sorted: no cycle, whatever the order."""
    with python_child(_CROSSING_REGENERATE_CHILD, root, 8, 60) as proc:
        out, err = communicate_within(proc, 60, "regenerating threads deadlocked")
    assert proc.returncode == 0, err
    kept: dict[str, set[str]] = {"ann": set(), "bob": set()}
    for line in out.splitlines():
        user, key = line.split()
        kept[user].add(key)
    store = FileStore(root, shard_depth=1)
    assert sum(map(len, kept.values())) == 8
    for user, keys in kept.items():
        assert _indexed(store, user) == keys
        assert _listed(store, user) == keys


# -- bounded upkeep -------------------------------------------------------------------


def _reads(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths *store* reads whole from now on (records and index files)."""
    seen: list[str] = []
    tree = store._tree
    real = tree.read

    def counted(shard: str, name: str) -> bytes | None:
        seen.append(f"{shard}/{name}")
        return real(shard, name)

    monkeypatch.setattr(tree, "read", counted)
    return seen


@pytest.mark.parametrize("sessions", [5, 200])
def test_linking_a_session_reads_no_other_record_of_the_user(
    sessions: int, file_store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It read every record of the user: 1,000 sessions made each login 33 ms."""
    for _ in range(sessions):
        assert file_store.save(new_key(), make_record(user_id="ann"), expected_version=None)
    seen = _reads(file_store, monkeypatch)
    key = new_key()
    assert file_store.save(key, make_record(user_id="ann"), expected_version=None)
    assert len(seen) == 2, seen  # the new key's file (absent) and the index
    seen.clear()
    assert file_store.delete(key)
    assert len(seen) == 2, seen  # the record and the index
    assert len(file_store.user_records("ann")) == sessions


def test_an_entry_whose_recorded_expiry_passed_is_read_once_then_carries_the_new_one(
    file_store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh does not touch the index; the next rewrite reads that record once."""
    refreshed, ended = new_key(), new_key()
    assert file_store.save(refreshed, make_record(user_id="ann"), expected_version=None)
    assert file_store.save(ended, make_record(user_id="ann"), expected_version=None)
    record_path(file_store, ended).unlink()  # gone behind the store's back: a crash, say
    index = file_store._users.path("ann")
    past = time.time() - 1
    Path(index).write_bytes(encode_index("ann", {refreshed: past, ended: past}))
    seen = _reads(file_store, monkeypatch)

    assert file_store.save(new_key(), make_record(user_id="ann"), expected_version=None)
    assert str(record_path(file_store, refreshed)) in seen
    owner, entries = decode_index(Path(index).read_bytes())
    assert ended not in entries, "an entry whose record is gone stayed"
    assert entries[refreshed] == file_store.load(refreshed).expires_at  # type: ignore[union-attr]

    seen.clear()
    assert file_store.save(new_key(), make_record(user_id="ann"), expected_version=None)
    assert str(record_path(file_store, refreshed)) not in seen


def test_an_index_of_the_previous_format_is_read_and_rewritten(file_store: FileStore) -> None:
    """Format 1 listed keys without expiries; each is looked at once on the next rewrite."""
    keys = sorted(new_key() for _ in range(3))
    for key in keys:
        assert file_store.save(key, make_record(user_id="ann"), expected_version=None)
    user = b"ann"
    head = struct.pack(">4sBII", b"WSGU", 1, len(user), len(keys))
    body = user + b"".join(bytes.fromhex(key) for key in keys)
    index = Path(file_store._users.path("ann"))
    index.write_bytes(head + struct.pack(">I", zlib.crc32(body, zlib.crc32(head))) + body)

    assert sorted(key for key, _ in file_store.user_records("ann")) == keys
    assert file_store.delete(keys[0])
    assert index.read_bytes()[4] == 2
    owner, entries = decode_index(index.read_bytes())
    assert sorted(entries) == keys[1:]
    assert all(entries[key] > time.time() for key in keys[1:])


def test_the_index_stays_bounded_without_reads_or_cleanups(file_store: FileStore) -> None:
    """Sessions that expire drop out as new ones are linked: no purge, no listing."""
    for _ in range(50):
        assert file_store.save(
            new_key(), make_record(user_id="ann", ttl=-1), expected_version=None
        )
    live = new_key()
    assert file_store.save(live, make_record(user_id="ann"), expected_version=None)
    path = Path(file_store._users.path("ann"))
    assert set(decode_index(path.read_bytes())[1]) == {live}

"""What the file store does beyond the conformance suite.

URLs and options, sharding, corrupt files, hostile keys, a broken or full disk,
writers killed mid-write, compare-and-set between processes, and the user index. Child processes
are started with :mod:`subprocess`, never forked from the (threaded) test process.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import stat
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FakeClock
from tests.helpers import python_child
from wsgisession.errors import ConfigError, StoreError
from wsgisession.stores import _file_format as file_format
from wsgisession.stores import file as file_module
from wsgisession.stores import open_store
from wsgisession.stores._file_tree import TEMP_PREFIX
from wsgisession.stores._file_users import decode_index, encode_index
from wsgisession.stores.base import CorruptRecord
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record, new_key
from wsgisession.testing._helpers import run_threads

_THREADS = 16


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Where the store under test keeps its files (not created beforehand)."""
    return tmp_path / "sessions"


@pytest.fixture
def file_store(root: Path) -> Iterator[FileStore]:
    """A fresh file store with the default options."""
    with FileStore(root) as store:
        yield store


def _path_of(store: FileStore, key: str) -> Path:
    shards = [key[2 * i : 2 * i + 2] for i in range(store.shard_depth)]
    return Path(store.directory).joinpath(*shards, key)


def _record_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


def _temp_files(root: Path) -> list[Path]:
    return list(root.rglob(TEMP_PREFIX + "*"))


def _finish(proc: subprocess.Popen[str]) -> str:
    with proc:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


# -- URLs and options ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "relative"),
    [
        pytest.param("file:./sessions", "sessions", id="dot-slash"),
        pytest.param("file:var/sessions", "var/sessions", id="bare"),
    ],
)
def test_relative_url_is_resolved_against_the_directory_at_construction(
    url: str, relative: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(url)
    monkeypatch.chdir("/")
    assert isinstance(store, FileStore)
    assert store.directory == str(tmp_path / relative)


@pytest.mark.parametrize(
    ("template", "relative"),
    [
        pytest.param("file:{}/s", "s", id="one-slash"),
        pytest.param("file://{}/s", "s", id="three-slashes"),
        pytest.param("file://localhost{}/s", "s", id="localhost"),
        pytest.param("file://{}/a%20b", "a b", id="percent-encoded"),
    ],
)
def test_absolute_url_names_its_directory(template: str, relative: str, tmp_path: Path) -> None:
    store = open_store(template.format(tmp_path))
    assert isinstance(store, FileStore)
    assert store.directory == str(tmp_path / relative)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("file:", id="empty"),
        pytest.param("file://", id="no-path"),
        pytest.param("file://example.com/sessions", id="remote-host"),
    ],
)
def test_url_without_a_local_directory_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="directory"):
        FileStore.from_url(url)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        pytest.param({"shard_depth": "x"}, "shard_depth", id="depth-str"),
        pytest.param({"shard_depth": 5}, "shard_depth", id="depth-too-deep"),
        pytest.param({"shard_depth": -1}, "shard_depth", id="depth-negative"),
        pytest.param({"shard_depth": True}, "shard_depth", id="depth-bool"),
        pytest.param({"fsync": "true"}, "fsync", id="fsync-str"),
        pytest.param({"fsync": 1}, "fsync", id="fsync-int"),
        pytest.param({"file_mode": "0600"}, "file_mode", id="mode-str"),
        pytest.param({"file_mode": 0o400}, "file_mode", id="mode-read-only"),
        pytest.param({"file_mode": 0o4600}, "file_mode", id="mode-setuid"),
        pytest.param({"mode": 0o600}, "mode", id="unknown"),
    ],
)
def test_bad_option_is_a_config_error_naming_it(
    options: dict[str, Any], name: str, root: Path
) -> None:
    with pytest.raises(ConfigError, match=f"'{name}'"):
        open_store(f"file:{root}", **options)


def test_options_reach_the_store(root: Path) -> None:
    store = open_store(f"file:{root}", shard_depth=0, fsync=True, file_mode=0o640)
    assert isinstance(store, FileStore)
    assert (store.shard_depth, store.fsync, store.file_mode) == (0, True, 0o640)


def test_building_and_reading_create_nothing(tmp_path: Path) -> None:
    """An app starts while its disk is not mounted yet; reads must not create it either."""
    root = tmp_path / "a" / "b"
    store = open_store(f"file:{root}")
    assert store.load(new_key()) is None
    assert store.count() == 0
    assert store.cleanup() == 0
    assert not (tmp_path / "a").exists()
    store.ping()
    assert root.is_dir()
    assert list(root.iterdir()) == []


# -- layout ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 2, 4])
def test_record_lands_in_its_shard_directory(depth: int, root: Path) -> None:
    store = FileStore(root, shard_depth=depth)
    key = new_key()
    assert store.save(key, make_record(b"x"), expected_version=None)
    expected = root.joinpath(*[key[2 * i : 2 * i + 2] for i in range(depth)], key)
    assert _record_files(root) == [expected]
    assert store.count() == 1
    assert store.save(new_key(), make_record(ttl=-5), expected_version=None)
    assert store.cleanup() == 1
    assert store.load(key) is not None


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_record_file_gets_file_mode(mode: int, root: Path) -> None:
    store = FileStore(root, file_mode=mode)
    key = new_key()
    assert store.save(key, make_record(), expected_version=None)
    assert stat.S_IMODE(_path_of(store, key).stat().st_mode) == mode


def test_fsync_store_round_trips(root: Path) -> None:
    store = FileStore(root, fsync=True)
    old, key = new_key(), new_key()
    assert store.save(old, make_record(b"a"), expected_version=None)
    assert store.save(key, make_record(b"b", user_id="u"), expected_version=None, replaces=old)
    record = store.load(key)
    assert record is not None and (record.data, record.user_id) == (b"b", "u")
    assert store.refresh(key, record.expires_at + 60, record.last_seen)
    assert store.load(old) is None
    assert store.delete(key)
    assert _record_files(root) == []


# -- corrupt files ---------------------------------------------------------------

_CORRUPTIONS = [
    pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
    pytest.param(lambda b: b[:10], id="truncated-header"),
    pytest.param(lambda b: b"", id="empty"),
    pytest.param(lambda b: random.Random(0).randbytes(len(b)), id="random-bytes"),
    pytest.param(lambda b: b"GIF8" + b[4:], id="wrong-magic"),
    pytest.param(lambda b: b[:4] + bytes([99]) + b[5:], id="future-format"),
    pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 1]), id="flipped-bit"),
    pytest.param(lambda b: b + b"\0", id="trailing-byte"),
]


@pytest.mark.parametrize("corrupt", _CORRUPTIONS)
def test_corrupt_file_is_a_corrupt_record_and_can_be_overwritten(
    corrupt: Callable[[bytes], bytes], file_store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    """load() raises, for the middleware to count; the store's other reads log and go on."""
    key = new_key()
    assert file_store.save(key, make_record(b'{"a": 1}', user_id="u"), expected_version=None)
    path = _path_of(file_store, key)
    path.write_bytes(corrupt(path.read_bytes()))
    caplog.set_level(logging.WARNING, logger="wsgisession")

    with pytest.raises(CorruptRecord) as info:
        file_store.load(key)
    assert '"a"' not in str(info.value) and key[:8] not in str(info.value)
    assert caplog.records == [], "the middleware logs a corrupt load, not the store"

    assert not file_store.refresh(key, time.time() + 60, time.time())
    lines = [r.getMessage() for r in caplog.records if r.name == "wsgisession"]
    assert len(lines) == 1
    assert key[:8] in lines[0] and key not in lines[0]
    assert file_store.user_records("u") == []
    assert not file_store.refresh(key, time.time() + 60, time.time())
    assert not file_store.save(key, make_record(b"v2", version=2), expected_version=1)
    assert file_store.save(key, make_record(b"new"), expected_version=None)
    loaded = file_store.load(key)
    assert loaded is not None and loaded.data == b"new"


def test_cleanup_removes_corrupt_files_but_keeps_newer_formats(file_store: FileStore) -> None:
    """A newer worker sharing the directory may have written a format this one can't read."""
    corrupt, newer = new_key(), new_key()
    for key in (corrupt, newer):
        assert file_store.save(key, make_record(), expected_version=None)
    path = _path_of(file_store, corrupt)
    path.write_bytes(path.read_bytes()[:20])
    path = _path_of(file_store, newer)
    blob = path.read_bytes()
    path.write_bytes(blob[:4] + bytes([blob[4] + 1]) + blob[5:])

    assert file_store.cleanup() == 1
    assert not _path_of(file_store, corrupt).exists()
    assert _path_of(file_store, newer).exists()


# -- hostile keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_key",
    [
        pytest.param("../../etc/passwd", id="traversal"),
        pytest.param("../" + "a" * 61, id="traversal-64-chars"),
        pytest.param("/" + "a" * 63, id="absolute"),
        pytest.param("A" * 64, id="uppercase"),
        pytest.param("a" * 63, id="short"),
        pytest.param("a" * 65, id="long"),
        pytest.param("a" * 64 + "\n", id="trailing-newline"),
        pytest.param("", id="empty"),
    ],
)
def test_a_key_that_is_not_64_hex_digits_is_refused_before_any_write(
    bad_key: str, tmp_path: Path
) -> None:
    """The middleware only passes SHA-256 digests; anything else must not reach a path."""
    store = FileStore(tmp_path / "inner" / "sessions")
    calls: list[Callable[[], object]] = [
        lambda: store.save(bad_key, make_record(), expected_version=None),
        lambda: store.save(new_key(), make_record(), expected_version=None, replaces=bad_key),
        lambda: store.load(bad_key),
        lambda: store.refresh(bad_key, time.time() + 60, time.time()),
        lambda: store.delete(bad_key),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="not a store key"):
            call()
    assert list(tmp_path.iterdir()) == []


# -- failures ----------------------------------------------------------------------


def test_a_file_where_the_directory_should_be_is_a_store_error(root: Path) -> None:
    root.write_text("not a directory")
    store = FileStore(root)
    with pytest.raises(StoreError) as info:
        store.ping()
    assert isinstance(info.value.__cause__, OSError)
    calls: list[Callable[[], object]] = [
        lambda: store.save(new_key(), make_record(), expected_version=None),
        lambda: store.load(new_key()),
        lambda: store.delete(new_key()),
        store.cleanup,
        store.count,
        lambda: store.claim_purge(60),
    ]
    for call in calls:
        with pytest.raises(StoreError):
            call()
    assert root.read_text() == "not a directory"


def test_a_file_where_a_shard_should_be_fails_only_that_shard(file_store: FileStore) -> None:
    blocked, other = new_key(), new_key()
    while other[:2] == blocked[:2]:
        other = new_key()
    file_store.ping()
    (Path(file_store.directory) / blocked[:2]).write_text("in the way")
    with pytest.raises(StoreError):
        file_store.save(blocked, make_record(), expected_version=None)
    assert file_store.save(other, make_record(), expected_version=None)


_FULL_DISK_CHILD = """
import resource, signal, sys
from wsgisession.errors import StoreError
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record

store = FileStore(sys.argv[1])
big = make_record(b"x" * (1 << 20), version=2)
# The write fails with EFBIG instead of the process being killed by SIGXFSZ.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    store.save(sys.argv[2], big, expected_version=1)
except StoreError as exc:
    print(type(exc.__cause__).__name__, exc.__cause__.errno)
else:
    sys.exit("the save succeeded past RLIMIT_FSIZE")
"""


def test_full_disk_is_a_store_error_and_keeps_the_old_record(
    file_store: FileStore, root: Path
) -> None:
    key = new_key()
    assert file_store.save(key, make_record(b"small"), expected_version=None)

    out = _finish(python_child(_FULL_DISK_CHILD, root, key))

    assert out.split() == ["OSError", str(errno.EFBIG)]
    loaded = file_store.load(key)
    assert loaded is not None and (loaded.data, loaded.version) == (b"small", 1)
    assert _temp_files(root) == []


# -- crashes -----------------------------------------------------------------------

_PAYLOAD_REPEAT = 32768  # 256 KiB records, so a kill often lands mid-write

_LOOPING_WRITER_CHILD = f"""
import sys
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record

store = FileStore(sys.argv[1])
key = sys.argv[2]
ready = False
while True:
    current = store.load(key)
    version = current.version + 1
    data = b"%08d" % version * {_PAYLOAD_REPEAT}
    if not store.save(key, make_record(data, version=version), expected_version=current.version):
        sys.exit("a save lost a race with nobody")
    if not ready:
        print("ready", flush=True)
        ready = True
"""


def test_writer_killed_at_random_moments_leaves_a_whole_record(
    file_store: FileStore, root: Path
) -> None:
    """SIGKILL between the temp write and the rename must leave the old or the new record."""
    key = new_key()
    assert file_store.save(key, make_record(b"%08d" % 1 * _PAYLOAD_REPEAT), expected_version=None)
    rng = random.Random()
    for _ in range(20):
        with python_child(_LOOPING_WRITER_CHILD, root, key) as proc:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            assert ready == "ready\n", proc.stderr.read() if proc.stderr else ""
            time.sleep(rng.uniform(0.005, 0.05))
            proc.kill()
            proc.wait()
        loaded = file_store.load(key)
        assert loaded is not None
        assert loaded.data == b"%08d" % loaded.version * _PAYLOAD_REPEAT

    assert loaded is not None and loaded.version > 20
    # Leftover temp files are cleanup's once they are old enough to be surely dead.
    hour_ago = time.time() - file_module._TEMP_MAX_AGE - 1
    for temp in _temp_files(root):
        os.utime(temp, (hour_ago, hour_ago))
    assert file_store.cleanup() == 0
    assert _temp_files(root) == []
    assert _record_files(root) == [_path_of(file_store, key)]


def test_cleanup_removes_only_stale_temp_files(file_store: FileStore, root: Path) -> None:
    file_store.ping()
    stale, fresh = root / ".tmp-stale", root / ".tmp-fresh"
    stale.write_bytes(b"half a record")
    fresh.write_bytes(b"being written")
    hour_ago = time.time() - file_module._TEMP_MAX_AGE - 1
    os.utime(stale, (hour_ago, hour_ago))
    # At depth 0 the temp files sit in the shard cleanup scans.
    store = FileStore(root, shard_depth=0)
    assert store.cleanup() == 0
    assert not stale.exists() and fresh.exists()


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


# -- refresh and create ------------------------------------------------------------


def _slot_bytes(path: Path) -> tuple[bytes, bytes]:
    blob = path.read_bytes()
    first, second = file_format.SLOT_AT
    return blob[first : first + file_format.SLOT.size], blob[second : second + 16]


def test_refresh_writes_the_times_in_place_and_rewrites_nothing(
    file_store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh sends a few bytes to the file, however large the session."""
    key = new_key()
    record = make_record(b"x" * 2000, user_id="ann")
    assert file_store.save(key, record, expected_version=None)
    path = _path_of(file_store, key)
    before, inode = path.read_bytes(), path.stat().st_ino

    def refused(*args: object) -> None:
        raise AssertionError("a refresh must not write or replace a file")

    monkeypatch.setattr(os, "write", refused)
    monkeypatch.setattr(os, "replace", refused)
    assert file_store.refresh(key, record.expires_at + 60, record.last_seen + 5)
    monkeypatch.undo()

    after = path.read_bytes()
    assert path.stat().st_ino == inode and len(after) == len(before)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    first = file_format.SLOT_AT[0]
    assert changed and first <= min(changed) and max(changed) < first + file_format.SLOT.size
    loaded = file_store.load(key)
    assert loaded is not None
    assert (loaded.data, loaded.version, loaded.user_id) == (record.data, 1, "ann")
    assert (loaded.expires_at, loaded.last_seen) == (record.expires_at + 60, record.last_seen + 5)
    head = path.read_bytes()[: file_format.HEAD_SIZE]
    assert file_format.header(head).expires_at == record.expires_at + 60  # cleanup's view


def test_refreshes_take_turns_on_the_slots(file_store: FileStore) -> None:
    """The slot holding the latest times is never the one being written."""
    key = new_key()
    record = make_record()
    assert file_store.save(key, record, expected_version=None)
    path = _path_of(file_store, key)
    assert file_format.slots(path.read_bytes()) == [None, None]
    for step in range(1, 5):
        assert file_store.refresh(key, record.expires_at + step, record.last_seen + step)
        slots = file_format.slots(path.read_bytes())
        latest = (record.expires_at + step, record.last_seen + step)
        assert latest in slots
        assert slots.index(latest) == (step - 1) % 2


@pytest.mark.parametrize("cut", [0, 5, 12, 16, 19], ids=lambda n: f"{n}-bytes-written")
def test_a_refresh_cut_short_loses_only_itself(
    cut: int, file_store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash in the middle of a refresh leaves a torn slot, never a corrupt record."""
    key = new_key()
    record = make_record(b"data")
    assert file_store.save(key, record, expected_version=None)
    assert file_store.refresh(key, record.expires_at + 60, record.last_seen + 1)
    path = _path_of(file_store, key)
    blob = path.read_bytes()
    torn = file_format.slot(record.expires_at + 120, record.last_seen + 2)[:cut]
    at = file_format.spare_slot(blob)
    path.write_bytes(blob[:at] + torn + blob[at + len(torn) :])
    caplog.set_level(logging.WARNING, logger="wsgisession")

    loaded = file_store.load(key)

    assert loaded is not None and loaded.data == b"data"
    assert (loaded.expires_at, loaded.last_seen) == (record.expires_at + 60, record.last_seen + 1)
    assert not caplog.records
    assert file_store.refresh(key, record.expires_at + 180, record.last_seen + 3)
    loaded = file_store.load(key)
    assert loaded is not None and loaded.expires_at == record.expires_at + 180


def test_torn_slots_fall_back_on_the_saved_times(file_store: FileStore) -> None:
    key = new_key()
    record = make_record(b"data")
    assert file_store.save(key, record, expected_version=None)
    assert file_store.refresh(key, record.expires_at + 60, record.last_seen + 1)
    assert file_store.refresh(key, record.expires_at + 120, record.last_seen + 2)
    path = _path_of(file_store, key)
    blob = bytearray(path.read_bytes())
    for at in file_format.SLOT_AT:
        blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))
    loaded = file_store.load(key)
    assert loaded is not None and loaded.data == b"data"
    assert (loaded.expires_at, loaded.last_seen) == (record.expires_at, record.last_seen)


def test_refreshes_racing_in_threads_keep_the_latest_expiry(file_store: FileStore) -> None:
    key = new_key()
    record = make_record()
    assert file_store.save(key, record, expected_version=None)
    offsets = random.Random(1).sample(range(1, 1000), _THREADS)

    def refresh(n: int) -> None:
        for step in range(20):
            later = offsets[n] + step
            assert file_store.refresh(key, record.expires_at + later, record.last_seen + later)

    run_threads(_THREADS, refresh)
    loaded = file_store.load(key)
    assert loaded is not None
    assert loaded.expires_at == record.expires_at + max(offsets) + 19


def test_refresh_with_fsync_flushes_the_record(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(root, fsync=True)
    key = new_key()
    record = make_record()
    assert store.save(key, record, expected_version=None)
    flushed: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: flushed.append(fd) or real(fd))
    assert store.refresh(key, record.expires_at + 60, record.last_seen)
    assert len(flushed) == 1


def test_a_record_of_the_previous_format_is_corrupt(
    file_store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Format 1 kept the times under the checksum; its files read as corrupt, not as errors."""
    key = new_key()
    assert file_store.save(key, make_record(), expected_version=None)
    path = _path_of(file_store, key)
    now, body = time.time(), b'{"a": 1}'
    head = struct.pack(">4sBBQdddIII", b"WSGS", 1, 0, 1, now, now + 3600, now, 0, 0, len(body))
    crc = struct.pack(">I", zlib.crc32(body, zlib.crc32(head)))
    path.write_bytes(head + crc + body)
    caplog.set_level(logging.WARNING, logger="wsgisession")

    with pytest.raises(CorruptRecord, match="unknown format version 1"):
        file_store.load(key)
    assert not file_store.refresh(key, now + 7200, now)
    assert "unknown format version 1" in caplog.text
    assert file_store.cleanup() == 1
    assert not path.exists()


def test_a_create_takes_no_lock(file_store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a create of a new key must not lock")

    monkeypatch.setattr(file_store._locks, "hold", refused)
    key = new_key()
    assert file_store.save(key, make_record(b"new"), expected_version=None)
    loaded = file_store.load(key)
    assert loaded is not None and loaded.data == b"new"
    assert _temp_files(Path(file_store.directory)) == []


@pytest.mark.parametrize("expired", [False, True], ids=["absent", "over-an-expired-record"])
def test_creates_racing_in_threads_have_one_winner(expired: bool, file_store: FileStore) -> None:
    key = new_key()
    if expired:
        assert file_store.save(key, make_record(b"old", ttl=-5), expected_version=None)
    won: list[int] = []

    def create(n: int) -> None:
        if file_store.save(key, make_record(b"%d" % n), expected_version=None):
            won.append(n)

    run_threads(_THREADS, create)
    assert len(won) == 1
    loaded = file_store.load(key)
    assert loaded is not None and loaded.data == b"%d" % won[0]
    assert _temp_files(Path(file_store.directory)) == []


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
    assert _temp_files(Path(file_store.directory)) == []


_LOOPING_REFRESHER_CHILD = """
import sys, time
from wsgisession.stores.file import FileStore

store = FileStore(sys.argv[1])
key = sys.argv[2]
print("ready", flush=True)
while True:
    current = store.load(key)
    if not store.refresh(key, current.expires_at + 1, current.last_seen + 1):
        sys.exit("a refresh found no record")
"""


def test_refresher_killed_at_random_moments_leaves_a_whole_record(
    file_store: FileStore, root: Path
) -> None:
    key = new_key()
    record = make_record(b"x" * 4096)
    assert file_store.save(key, record, expected_version=None)
    rng = random.Random()
    latest = record.expires_at
    for _ in range(8):
        with python_child(_LOOPING_REFRESHER_CHILD, root, key) as proc:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            assert ready == "ready\n", proc.stderr.read() if proc.stderr else ""
            time.sleep(rng.uniform(0.005, 0.05))
            proc.kill()
            proc.wait()
        loaded = file_store.load(key)
        assert loaded is not None and loaded.data == record.data
        assert loaded.expires_at >= latest
        latest = loaded.expires_at
    assert latest > record.expires_at


# -- several processes -------------------------------------------------------------

_MERGING_WRITER_CHILD = """
import json, sys, time
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record

store = FileStore(sys.argv[1])
key, name, writes = sys.argv[2], sys.argv[3], int(sys.argv[4])
time.sleep(max(0.0, float(sys.argv[5]) - time.time()))  # start together
for i in range(writes):
    while True:
        current = store.load(key)
        data = json.loads(current.data)
        data[name] = i
        new = make_record(json.dumps(data).encode(), version=current.version + 1)
        if store.save(key, new, expected_version=current.version):
            break
"""


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
        _finish(proc)
    loaded = file_store.load(key)
    assert loaded is not None
    assert json.loads(loaded.data) == {f"p{n}": writes - 1 for n in range(processes)}
    assert loaded.version == 1 + processes * writes


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
    answers = sorted(_finish(proc).strip() for proc in procs)
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


# -- the application's clock ----------------------------------------------------------


def test_expiry_is_judged_by_the_application_clock(
    file_store: FileStore, root: Path, clock: FakeClock
) -> None:
    """Every expiry, and the purge lease, is read on ``wsgisession._clock.now``."""
    key, anns = new_key(), new_key()
    assert file_store.save(key, make_record(b"live", ttl=60), expected_version=None)
    assert file_store.save(anns, make_record(b"a", ttl=60, user_id="ann"), expected_version=None)
    assert file_store.claim_purge(100)
    assert not file_store.claim_purge(100)
    clock.advance(120)
    now = clock()
    assert file_store.load(key) is None
    assert not file_store.refresh(key, now + 60, now)
    assert not file_store.save(key, make_record(b"v2", version=2), expected_version=1)
    assert file_store.user_records("ann") == []
    assert file_store.count() == 0
    assert file_store.claim_purge(100)
    assert file_store.cleanup() == 2
    assert _record_files(root) == []


def test_a_temp_file_is_aged_by_the_kernels_clock(root: Path, clock: FakeClock) -> None:
    """A temp file is as old as its mtime says, however far the application's clock moved."""
    store = FileStore(root, shard_depth=0)  # temp files in the one shard cleanup scans
    store.ping()
    fresh = root / (TEMP_PREFIX + "fresh")
    fresh.write_bytes(b"being written")
    clock.advance(2 * file_module._TEMP_MAX_AGE)
    assert store.cleanup() == 0
    assert fresh.exists()


# -- the user index ------------------------------------------------------------------


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


def _key_in_shard(prefix: str) -> str:
    while not (key := new_key()).startswith(prefix):
        pass
    return key


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
    assert _record_files(root) == []


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
    _path_of(file_store, gone).unlink()
    blob = _path_of(file_store, corrupt).read_bytes()
    _path_of(file_store, corrupt).write_bytes(blob[:-1])
    other = FileStore(file_store.directory, shard_depth=0)  # writes elsewhere, no index
    assert other.save(moved, make_record(user_id="bob"), expected_version=None)
    _path_of(other, moved).replace(_path_of(file_store, moved))
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
    _path_of(file_store, gone).unlink()  # a crash, or an operator: the sweep catches it

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
    _path_of(file_store, gone).unlink()
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
        for line in _finish(proc).splitlines():
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

store = FileStore(sys.argv[1], shard_depth=1)
threads, rounds = int(sys.argv[2]), int(sys.argv[3])
users = ["ann", "bob"]
barrier = threading.Barrier(threads + 1)
errors, final = [], {}

def key_in(prefix):
    while not (key := new_key()).startswith(prefix):
        pass
    return key

def regenerate(n):
    # Even threads hop from shard 1 to shard e and back, odd ones the other way, and
    # every hop hands the session to the other user: each save takes two record
    # locks and two user locks that the neighbouring thread wants in the other order.
    try:
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
    except BaseException as exc:
        errors.append(exc)

def housekeeping():
    barrier.wait()
    for _ in range(rounds // 4):
        store.cleanup()
        store.user_records("ann")
        store.user_records("bob")

pool = [threading.Thread(target=regenerate, args=(n,)) for n in range(threads)]
pool.append(threading.Thread(target=housekeeping))
for t in pool:
    t.start()
for t in pool:
    t.join()
if errors:
    raise errors[0]
for key, user in final.items():
    print(user, key)
"""


def test_crossing_regenerates_in_threads_do_not_deadlock(root: Path) -> None:
    """Record locks first, then user locks, each sorted: no cycle, whatever the order."""
    with python_child(_CROSSING_REGENERATE_CHILD, root, 8, 60) as proc:
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("regenerating threads deadlocked")
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

"""The file store beyond the conformance suite: URLs and options, its layout on disk
(tombstones included), keys it refuses, a broken or full disk, corrupt files, and the
application's clock.

The rest of the file store's tests, by behaviour: ``test_file_crashes.py`` (a crash at
any moment, fsync), ``test_file_locking.py`` (threads and processes on one
directory), ``test_file_users.py`` (the user index) and ``test_file_ownership.py``
(the store's directory against other users and planted links). Child processes are
started with :mod:`subprocess`, never forked from the (threaded) test process.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import stat
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    FakeClock,
    communicate_within,
    counter,
    finish,
    make_client,
    python_child,
    record_files,
    record_path,
    temp_files,
)
from wsgisession.errors import ConfigError, StoreError
from wsgisession.events import SessionEvent
from wsgisession.stores import _file_format as file_format
from wsgisession.stores import file as file_module
from wsgisession.stores import open_store
from wsgisession.stores._file_tree import TEMP_PREFIX
from wsgisession.stores.base import CorruptRecord
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record, make_tombstone, new_key

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
        # A NUL failed on the first operation with a bare ValueError; a query or a
        # fragment made a directory named after it.
        pytest.param("file:///tmp/a%00b", id="nul"),
        pytest.param("file:./a\0b", id="nul-in-a-plain-path"),
        pytest.param("file:///tmp/sessions?mode=1", id="query"),
        pytest.param("file:///tmp/sessions#top", id="fragment"),
    ],
)
def test_url_without_a_local_directory_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="directory|file URL"):
        FileStore.from_url(url)


def test_an_escaped_question_mark_is_part_of_the_directory(tmp_path: Path) -> None:
    assert FileStore.from_url(f"file://{tmp_path}/what%3F").directory == f"{tmp_path}/what?"


def test_a_url_error_masks_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        open_store("file://ann:hunter2@example.com/sessions")
    assert "hunter2" not in str(info.value)


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
    assert record_files(root) == [expected]
    assert store.count() == 1
    assert store.save(new_key(), make_record(ttl=-5), expected_version=None)
    assert store.cleanup() == 1
    assert store.load(key) is not None


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_record_file_gets_file_mode(mode: int, root: Path) -> None:
    store = FileStore(root, file_mode=mode)
    key = new_key()
    assert store.save(key, make_record(), expected_version=None)
    assert stat.S_IMODE(record_path(store, key).stat().st_mode) == mode


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
    assert record_files(root) == []


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
    path = record_path(store, old)
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
    assert record_path(store, old).exists()
    assert store.cleanup() == 1
    assert not record_path(store, old).exists()
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
    assert file_format.decode_record(record_path(store, old).read_bytes()) == stone
    loaded = store.load(new)
    assert loaded is not None and (loaded.data, loaded.user_id) == (b"moved", "ann")
    assert [key for key, _ in store.user_records("ann")] == [new]
    assert store.count() == 1


# -- keys it refuses ---------------------------------------------------------------


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


# -- a broken or full disk -----------------------------------------------------------


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
        out, err = communicate_within(
            proc, 15, "save() into a dangling-symlink directory hung instead of raising"
        )
    assert out.strip() == "store-error", err


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
    print(type(exc.__cause__).__name__, exc.__cause__.errno, "None" in str(exc))
else:
    sys.exit("the save succeeded past RLIMIT_FSIZE")
"""


def test_full_disk_is_a_store_error_and_keeps_the_old_record(
    file_store: FileStore, root: Path
) -> None:
    key = new_key()
    assert file_store.save(key, make_record(b"small"), expected_version=None)

    out = finish(python_child(_FULL_DISK_CHILD, root, key))

    # The message names no file it has none for ("File too large: None -> None").
    assert out.split() == ["OSError", str(errno.EFBIG), "False"]
    loaded = file_store.load(key)
    assert loaded is not None and (loaded.data, loaded.version) == (b"small", 1)
    assert temp_files(root) == []


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
    path = record_path(file_store, key)
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


def test_a_record_of_the_previous_format_is_corrupt(
    file_store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Format 1 kept the times under the checksum; its files read as corrupt, not as errors."""
    key = new_key()
    assert file_store.save(key, make_record(), expected_version=None)
    path = record_path(file_store, key)
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


def test_cleanup_removes_corrupt_files_but_keeps_newer_formats(file_store: FileStore) -> None:
    """A newer worker sharing the directory may have written a format this one can't read."""
    corrupt, newer = new_key(), new_key()
    for key in (corrupt, newer):
        assert file_store.save(key, make_record(), expected_version=None)
    path = record_path(file_store, corrupt)
    path.write_bytes(path.read_bytes()[:20])
    path = record_path(file_store, newer)
    blob = path.read_bytes()
    path.write_bytes(blob[:4] + bytes([blob[4] + 1]) + blob[5:])

    assert file_store.cleanup() == 1
    assert not record_path(file_store, corrupt).exists()
    assert record_path(file_store, newer).exists()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b"GIF8" + b[4:], id="bad-magic"),
        pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 1]), id="bad-checksum"),
        pytest.param(lambda b: b[:4] + bytes([9]) + b[5:], id="unknown-format"),
        pytest.param(lambda b: b[:5] + b"\x01" + b[6:], id="padding-not-zero"),
        pytest.param(lambda b: b + b"\x00", id="longer-than-its-lengths"),
    ],
)
def test_a_record_with_bad_framing_is_counted_and_emitted_as_corrupt(
    damage: Any, file_store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The store logged these and said "missing": the middleware never counted them."""
    events: list[SessionEvent] = []
    client, middleware = make_client({"/": counter}, store=file_store, listeners=[events.append])
    assert client.get("/").get_data() == b"1"
    (path,) = [p for p in Path(file_store.directory).rglob("*") if len(p.name) == 64]
    path.write_bytes(damage(path.read_bytes()))
    caplog.set_level(logging.WARNING, logger="wsgisession")

    assert client.get("/").get_data() == b"1"

    assert middleware.metrics()["corrupt"] == 1
    assert [e.name for e in events].count("corrupt") == 1
    assert path.name not in caplog.text and path.name[:8] in caplog.text


def test_a_directory_where_a_record_was_is_a_missing_session_never_an_error(
    file_store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Writing and logging out both remove what the cookie named: a directory there is
    # left, and logged, instead of failing every request that carries the cookie.
    def logout(session: Any, request: Any) -> str:
        session.invalidate()
        return "out"

    client, middleware = make_client({"/": counter, "/logout": logout}, store=file_store)
    client.get("/")
    (path,) = [p for p in Path(file_store.directory).rglob("*") if len(p.name) == 64]
    path.unlink()
    path.mkdir()
    old_cookie = client.get_cookie("session_id")
    assert old_cookie is not None
    caplog.set_level(logging.WARNING, logger="wsgisession")

    assert client.get("/").get_data() == b"1"  # a fresh session, under a new cookie
    client.set_cookie("session_id", old_cookie.value)
    assert client.get("/logout").status_code == 200
    assert path.is_dir() and f"{path.name[:8]}… should be" in caplog.text
    assert file_store.count() == 1
    assert middleware.metrics()["corrupt"] == 2


# -- the application's clock, and the kernel's ---------------------------------------


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
    assert record_files(root) == []


def test_a_temp_file_is_aged_by_the_kernels_clock(root: Path, clock: FakeClock) -> None:
    """A temp file is as old as its mtime says, however far the application's clock moved."""
    store = FileStore(root, shard_depth=0)  # temp files in the one shard cleanup scans
    store.ping()
    fresh = root / (TEMP_PREFIX + "fresh")
    fresh.write_bytes(b"being written")
    clock.advance(2 * file_module._TEMP_MAX_AGE)
    assert store.cleanup() == 0
    assert fresh.exists()


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

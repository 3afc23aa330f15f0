"""The file store through crashes: whatever moment a writer or a refresher dies at, the
record on disk is whole, the old one or the new one.

A refresh writes the new times in place, into whichever of two slots does not hold
the latest, so a torn write loses only itself; every other write goes to a temp file
renamed over the record; with ``fsync``, every new file and its directory are flushed.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    python_child,
    record_files,
    record_path,
    temp_files,
)
from wsgisession.stores import _file_format as file_format
from wsgisession.stores import file as file_module
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record, new_key

# -- refreshes in place --------------------------------------------------------------


def test_refresh_writes_the_times_in_place_and_rewrites_nothing(
    file_store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh sends a few bytes to the file, however large the session."""
    key = new_key()
    record = make_record(b"x" * 2000, user_id="ann")
    assert file_store.save(key, record, expected_version=None)
    path = record_path(file_store, key)
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
    path = record_path(file_store, key)
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
    path = record_path(file_store, key)
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
    path = record_path(file_store, key)
    blob = bytearray(path.read_bytes())
    for at in file_format.SLOT_AT:
        blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))
    loaded = file_store.load(key)
    assert loaded is not None and loaded.data == b"data"
    assert (loaded.expires_at, loaded.last_seen) == (record.expires_at, record.last_seen)


# -- processes killed mid-write --------------------------------------------------------


def _killed_at_random_moments(code: str, root: Path, key: str, times: int) -> Iterator[int]:
    """Start the looping child *code* *times* in turn, each killed (SIGKILL) a random
    moment after it says it is ready; yield after each kill, for the test to look."""
    rng = random.Random()
    for n in range(times):
        with python_child(code, root, key) as proc:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            assert ready == "ready\n", proc.stderr.read() if proc.stderr else ""
            # The child's window to get into a write: where the kill lands is the test.
            time.sleep(rng.uniform(0.005, 0.05))
            proc.kill()
            proc.wait()
        yield n


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
    for _ in _killed_at_random_moments(_LOOPING_WRITER_CHILD, root, key, times=20):
        loaded = file_store.load(key)
        assert loaded is not None
        assert loaded.data == b"%08d" % loaded.version * _PAYLOAD_REPEAT

    assert loaded is not None and loaded.version > 20
    # Leftover temp files are cleanup's once they are old enough to be surely dead.
    hour_ago = time.time() - file_module._TEMP_MAX_AGE - 1
    for temp in temp_files(root):
        os.utime(temp, (hour_ago, hour_ago))
    assert file_store.cleanup() == 0
    assert temp_files(root) == []
    assert record_files(root) == [record_path(file_store, key)]


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
    latest = record.expires_at
    for _ in _killed_at_random_moments(_LOOPING_REFRESHER_CHILD, root, key, times=8):
        loaded = file_store.load(key)
        assert loaded is not None and loaded.data == record.data
        assert loaded.expires_at >= latest
        latest = loaded.expires_at
    assert latest > record.expires_at


# -- fsync ---------------------------------------------------------------------------------


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
    path = record_path(store, key)
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
    new_path = record_path(store, new)
    index = store._users.path("u")
    assert ident(new_path) in flushed and ident(new_path.parent) in flushed
    assert ident(path.parent) in flushed  # the unlink of the old record
    assert ident(Path(index)) in flushed and ident(Path(index).parent) in flushed

    # A delete: the directory entry.
    flushed.clear()
    assert store.delete(new)
    assert ident(new_path.parent) in flushed

"""The file store against a hostile local user, a careless operator and bad records.

The store owns its directory: modes of what it makes, refusal of a directory someone
else owns or can write, no symbolic link followed inside it, nothing that is not a
regular file read as a record (nor waited on), and no full key in a message.

Tests run as root, so another user is uid 65534: its files are made with ``os.chown``,
and a child process runs as that user where the other user must act by itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from tests.helpers import (
    CHILD_ENV,
    counter,
    make_client,
    record_path,
)
from wsgisession.errors import ConfigError, StoreError
from wsgisession.events import SessionEvent
from wsgisession.stores import open_store
from wsgisession.stores._file_format import encode_record
from wsgisession.stores.base import CorruptRecord
from wsgisession.stores.file import FileStore
from wsgisession.testing import make_record, new_key

#: Another user than the one the tests run as (nobody).
OTHER = 65534


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory like /tmp, where every user can make files (pytest's tmp_path is private)."""
    path = Path(tempfile.mkdtemp(prefix="wsgisession-test-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def umask() -> Iterator[Any]:
    """Set the process's umask for the test; the old one is put back after."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@contextlib.contextmanager
def _within(seconds: float) -> Iterator[None]:
    """Fail with TimeoutError if the block is still blocked after *seconds*."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@functools.cache
def _other_users_python() -> str:
    """A Python that :data:`OTHER` may run: this one may live in root's home."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [candidate, "-c", "pass"], user=OTHER, group=OTHER, check=True, timeout=60
            )
            return candidate
    pytest.skip("no Python that another user may run")


def _as_other_user(code: str, *args: object) -> None:
    """Run ``python -c code args…`` as :data:`OTHER`, which must succeed.

    The child imports this checkout's wsgisession and this environment's packages.
    """
    path = [CHILD_ENV["PYTHONPATH"], sysconfig.get_paths()["purelib"]]
    done = subprocess.run(
        [_other_users_python(), "-c", code, *map(str, args)],
        user=OTHER,
        group=OTHER,
        extra_groups=[],
        capture_output=True,
        text=True,
        env={**CHILD_ENV, "PYTHONPATH": os.pathsep.join(path)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# -- modes of what the store makes -------------------------------------------------------


def test_missing_directories_and_parents_are_made_private_whatever_the_umask(
    tmp_path: Path, umask: Any
) -> None:
    """Under umask 0, os.makedirs made the parents 0o777: anyone could swap the store."""
    umask(0)
    root = tmp_path / "a" / "b" / "sessions"
    store = FileStore(root)
    key = new_key()
    assert store.save(key, make_record(user_id="ann"), expected_version=None)
    made = [tmp_path / "a", tmp_path / "a" / "b", root, root / key[:2], root / key[:2] / key[2:4]]
    made += [p for p in (root / "users").rglob("*") if p.is_dir()] + [root / "users"]
    assert {str(p): _mode(p) for p in made} == {str(p): 0o700 for p in made}
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) >= 4  # the record, the index, their lock files
    assert {str(p): _mode(p) for p in files} == {str(p): 0o600 for p in files}


@pytest.mark.parametrize(
    ("file_mode", "dir_mode"), [(0o640, 0o750), (0o660, 0o770)], ids=["0o640", "0o660"]
)
def test_a_group_file_mode_gives_directories_the_groups_search_bit_despite_the_umask(
    file_mode: int, dir_mode: int, tmp_path: Path, umask: Any
) -> None:
    umask(0o077)
    root = tmp_path / "a" / "sessions"
    store = FileStore(root, file_mode=file_mode)
    key = new_key()
    assert store.save(key, make_record(), expected_version=None)
    for directory in (tmp_path / "a", root, root / key[:2], root / key[:2] / key[2:4]):
        assert _mode(directory) == dir_mode, directory
    assert _mode(record_path(store, key)) == file_mode


@pytest.mark.parametrize(
    "file_mode", [0o666, 0o644, 0o604, 0o602, 0o700, 0o670, 0o1600], ids=lambda m: f"{m:#o}"
)
def test_a_file_mode_with_any_bit_for_others_or_beyond_read_write_is_refused(
    file_mode: int, root: Path
) -> None:
    with pytest.raises(ConfigError, match="'file_mode'"):
        open_store(f"file:{root}", file_mode=file_mode)


# -- the store's directory ---------------------------------------------------------------


def test_a_directory_another_user_made_first_is_refused_on_first_use(shared_tmp: Path) -> None:
    """file:/tmp/sessions, made by someone else first: nothing is read from it or written."""
    root = shared_tmp / "sessions"
    _as_other_user(
        "import os, sys; os.umask(0); os.mkdir(sys.argv[1], 0o777); "
        "open(os.path.join(sys.argv[1], '.purge'), 'w').close()",
        root,
    )
    assert root.stat().st_uid == OTHER
    store = FileStore(root)
    for call in (
        store.ping,
        lambda: store.load(new_key()),
        lambda: store.save(new_key(), make_record(), expected_version=None),
        lambda: store.claim_purge(60),
        store.count,
        store.cleanup,
        lambda: store.user_records("ann"),
    ):
        with pytest.raises(StoreError, match=f"belongs to uid {OTHER}"):
            call()
    assert [p.name for p in root.iterdir()] == [".purge"]


def test_a_store_run_by_another_user_refuses_a_directory_it_does_not_own(
    shared_tmp: Path,
) -> None:
    """The check is against the process's own user, whoever that is."""
    root = shared_tmp / "sessions"
    root.mkdir(mode=0o755)
    _as_other_user(
        "import sys\n"
        "from wsgisession.errors import StoreError\n"
        "from wsgisession.stores.file import FileStore\n"
        "try:\n"
        "    FileStore(sys.argv[1]).ping()\n"
        "except StoreError as exc:\n"
        "    assert 'belongs to uid 0, not to this process' in str(exc), exc\n"
        "else:\n"
        "    sys.exit('a directory of another user was accepted')\n",
        root,
    )


@pytest.mark.parametrize(
    ("mode", "file_mode", "who"),
    [
        pytest.param(0o777, 0o600, "others", id="world-writable"),
        pytest.param(0o1777, 0o600, "others", id="sticky-world-writable"),
        pytest.param(0o703, 0o660, "others", id="others-write-group-trusted"),
        pytest.param(0o770, 0o600, "its group", id="group-writable"),
        pytest.param(0o770, 0o640, "its group", id="group-writable-group-reads"),
    ],
)
def test_a_directory_others_can_write_is_refused(
    mode: int, file_mode: int, who: str, root: Path
) -> None:
    root.mkdir()
    root.chmod(mode)
    store = FileStore(root, file_mode=file_mode)
    with pytest.raises(StoreError, match=f"writable by {who}") as info:
        store.ping()
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(StoreError, match=f"writable by {who}"):
        store.load(new_key())
    assert list(root.iterdir()) == []


def test_a_group_writable_directory_is_accepted_when_file_mode_lets_the_group_write(
    root: Path,
) -> None:
    root.mkdir()
    root.chmod(0o770)
    store = FileStore(root, file_mode=0o660)
    store.ping()
    key = new_key()
    assert store.save(key, make_record(), expected_version=None)
    assert store.load(key) is not None


def test_the_directory_may_be_a_symbolic_link_the_operator_made(tmp_path: Path) -> None:
    """Only links inside the store are refused; the path the operator gives is theirs."""
    target = tmp_path / "volume"
    target.mkdir(mode=0o700)
    (tmp_path / "sessions").symlink_to(target)
    store = FileStore(tmp_path / "sessions")
    key = new_key()
    assert store.save(key, make_record(), expected_version=None)
    assert store.load(key) is not None
    assert store.count() == 1


# -- symbolic links and other users' things inside the store -----------------------------


def _shard_with_a_record(store: FileStore) -> tuple[Path, str]:
    """A shard directory of *store* holding one record, and a fresh key of that shard."""
    first = new_key()
    # A save that compares versions takes the shard's lock, so makes its lock file.
    assert store.save(first, make_record(), expected_version=None)
    assert store.save(first, make_record(version=2), expected_version=1)
    while (key := new_key())[:4] != first[:4]:
        pass
    return record_path(store, first).parent, key


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_a_lock_file_planted_as_a_symbolic_link_is_refused(
    dangling: bool, file_store: FileStore, tmp_path: Path
) -> None:
    """O_CREAT followed the link: the store created (or opened) the link's target."""
    shard, key = _shard_with_a_record(file_store)
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_bytes(b"precious")
    (shard / ".lock").unlink()
    (shard / ".lock").symlink_to(victim)
    with pytest.raises(StoreError, match=r"lock file .*\.lock is a symbolic link"):
        file_store.save(key, make_record(user_id="ann"), expected_version=None)
    with pytest.raises(StoreError, match="symbolic link"):
        file_store.refresh(key, time.time() + 60, time.time())
    if dangling:
        assert not victim.exists(), "the store created the target of a planted link"
    else:
        assert victim.read_bytes() == b"precious"


def test_a_lock_file_of_another_user_is_refused(file_store: FileStore) -> None:
    """Left by another user before the store first used the directory."""
    shard, key = _shard_with_a_record(file_store)
    os.chown(shard / ".lock", OTHER, OTHER)
    with pytest.raises(StoreError, match="owned by another user"):
        FileStore(file_store.directory).delete(key)


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo", "other-user"])
def test_a_purge_lease_that_is_no_file_of_ours_is_refused_and_nothing_is_truncated(
    plant: str, file_store: FileStore, tmp_path: Path
) -> None:
    """The lease is truncated and rewritten: through a link, that hit another file."""
    file_store.ping()
    lease = Path(file_store.directory, ".purge")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    if plant == "symlink":
        lease.symlink_to(victim)
    elif plant == "hardlink":
        os.link(victim, lease)
    elif plant == "fifo":
        os.mkfifo(lease, 0o600)
    else:
        lease.write_text("0")
        os.chown(lease, OTHER, OTHER)
    with _within(5), pytest.raises(StoreError, match=r"purge lease \.purge .*refused"):
        file_store.claim_purge(60)
    assert victim.read_bytes() == b"precious"


def test_a_shard_planted_as_a_symbolic_link_is_refused_and_never_entered(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Records were written through the link, outside the store; scans counted them."""
    outside = tmp_path / "outside"
    planted = FileStore(outside)  # files of our own user, out of the store
    key = new_key()
    assert planted.save(key, make_record(ttl=-5), expected_version=None)
    live = new_key()
    while live[:2] != key[:2]:
        live = new_key()
    assert planted.save(live, make_record(), expected_version=None)
    before = sorted(p.name for p in outside.rglob("*"))
    store = FileStore(root)
    store.ping()
    (root / key[:2]).symlink_to(outside / key[:2])

    with pytest.raises(StoreError, match=f"directory {key[:2]} is a symbolic link"):
        store.save(key, make_record(), expected_version=None)
    with pytest.raises(StoreError, match="symbolic link"):
        store.load(live)
    caplog.set_level(logging.WARNING, logger="wsgisession")
    assert store.count() == 0
    assert store.cleanup() == 0
    assert sorted(p.name for p in outside.rglob("*")) == before
    assert f"directory {key[:2]} is a symbolic link; skipped" in caplog.text


def test_a_second_level_shard_planted_as_a_link_is_refused(root: Path, tmp_path: Path) -> None:
    store = FileStore(root)
    key = new_key()
    (root / key[:2]).mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    (tmp_path / "elsewhere").mkdir()
    (root / key[:2] / key[2:4]).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match=f"directory {key[:2]}/{key[2:4]} is a symbolic link"):
        store.save(key, make_record(), expected_version=None)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_shard_of_another_user_is_refused(root: Path) -> None:
    store = FileStore(root)
    key = new_key()
    (root / key[:2]).mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    os.chown(root / key[:2], OTHER, OTHER)
    with pytest.raises(StoreError, match=f"directory {key[:2]} belongs to uid {OTHER}"):
        store.save(key, make_record(), expected_version=None)


def test_a_record_planted_by_another_user_is_never_served(file_store: FileStore) -> None:
    """A valid record for a cookie the other user holds, with data of their choosing."""
    key = new_key()
    assert file_store.save(key, make_record(b"mine", user_id="ann"), expected_version=None)
    path = record_path(file_store, key)
    path.write_bytes(encode_record(make_record(b'{"admin": true}', user_id="ann")))
    os.chown(path, OTHER, OTHER)

    with pytest.raises(CorruptRecord, match="owned by another user"):
        file_store.load(key)
    assert file_store.user_records("ann") == []
    assert not file_store.refresh(key, time.time() + 60, time.time())
    assert file_store.count() == 0
    assert file_store.cleanup() == 1
    assert not path.exists()


def test_a_record_path_planted_as_a_symbolic_link_is_corrupt_and_never_followed(
    file_store: FileStore, tmp_path: Path
) -> None:
    key = new_key()
    assert file_store.save(key, make_record(b"real"), expected_version=None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(record_path(file_store, key).read_bytes())
    path = record_path(file_store, key)
    path.unlink()
    path.symlink_to(elsewhere)
    copy = elsewhere.read_bytes()

    with pytest.raises(CorruptRecord, match="symbolic link"):
        file_store.load(key)
    assert not file_store.refresh(key, time.time() + 600, time.time())
    assert file_store.count() == 0
    assert file_store.save(key, make_record(b"new"), expected_version=None)
    assert not path.is_symlink()
    assert elsewhere.read_bytes() == copy, "a write went through the link"
    assert file_store.delete(key)
    assert elsewhere.read_bytes() == copy


def _plant_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path, 0o600)


def _plant_device(path: Path) -> None:
    path.unlink()
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pytest.skip("no CAP_MKNOD here")


def _plant_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param(_plant_fifo, id="fifo"),
        pytest.param(_plant_device, id="device"),
        pytest.param(_plant_directory, id="directory"),
    ],
)
def test_a_record_path_that_is_not_a_regular_file_reads_as_corrupt_at_once(
    plant: Any, file_store: FileStore
) -> None:
    """A FIFO at a record path blocked load, cleanup and count for ever."""
    key = new_key()
    assert file_store.save(key, make_record(), expected_version=None)
    path = record_path(file_store, key)
    plant(path)
    with _within(5):
        with pytest.raises(CorruptRecord, match="not a regular file"):
            file_store.load(key)
        assert not file_store.refresh(key, time.time() + 60, time.time())
        assert file_store.count() == 0
        removed = file_store.cleanup()
    if path.is_dir():
        assert removed == 0 and path.is_dir()  # skipped, not an error; not ours to remove
    else:
        assert removed == 1 and not os.path.lexists(path)


def test_a_fifo_at_a_record_path_is_a_counted_corrupt_miss_through_the_middleware(
    file_store: FileStore,
) -> None:
    events: list[SessionEvent] = []
    client, middleware = make_client({"/": counter}, store=file_store, listeners=[events.append])
    assert client.get("/").get_data() == b"1"
    (key,) = [p.name for p in Path(file_store.directory).rglob("*") if len(p.name) == 64]
    _plant_fifo(record_path(file_store, key))
    with _within(5):
        assert client.get("/").get_data() == b"1"
    assert middleware.metrics()["corrupt"] == 1
    assert [e.name for e in events].count("corrupt") == 1


# -- messages ----------------------------------------------------------------------------


def test_no_message_holds_a_whole_key(file_store: FileStore) -> None:
    """OSError messages carry file names, and a record's file name is its whole key."""
    key = new_key()
    assert file_store.save(key, make_record(), expected_version=None)
    path = record_path(file_store, key)
    _plant_directory(path)
    # Before: refresh opened the directory for writing, and the error named it in full.
    assert not file_store.refresh(key, time.time() + 60, time.time())
    with pytest.raises(StoreError) as info:
        file_store.save(key, make_record(user_id="ann"), expected_version=None)
    message = str(info.value)
    assert key not in message and key[:8] in message, message
    cause = info.value.__cause__
    assert isinstance(cause, OSError)
    assert key not in str(cause) and key not in f"{cause.filename} {cause.filename2}"

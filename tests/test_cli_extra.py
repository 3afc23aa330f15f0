"""The command line on a terminal and for scripts: cleanup's progress, ``stats --json``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from wsgisession.cli import main
from wsgisession.config import Config
from wsgisession.purge import BATCH
from wsgisession.stores import Store
from wsgisession.stores.memory import MemoryStore
from wsgisession.testing import make_record, new_key

KEY = "a-long-random-test-secret-for-the-test-suite"


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _ini(tmp_path: Path, store: str = "memory://") -> Path:
    path = tmp_path / "app.ini"
    path.write_text(f"[session]\nsecret_key = {KEY}\nstore = {store}\n", encoding="utf-8")
    return path


@pytest.fixture
def filled(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    """A memory store holding two and a half batches of expired records and two live
    ones, which the command opens instead of a fresh one (a memory store lives in one
    process, and filling a real store that much would make the test slow)."""
    store = MemoryStore()
    for _ in range(BATCH * 5 // 2):
        assert store.save(new_key(), make_record(ttl=-5), expected_version=None)
    for _ in range(2):
        assert store.save(new_key(), make_record(ttl=3600), expected_version=None)

    def open_filled(self: Config) -> Store:
        return store

    monkeypatch.setattr(Config, "open_store", open_filled)
    return store


def test_cleanup_on_a_terminal_shows_a_running_count_then_clears_it(
    filled: MemoryStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)

    code = main(["cleanup", "--config", str(_ini(tmp_path))])

    shown = terminal.getvalue()
    assert code == 0
    assert capsys.readouterr().out == f"{BATCH * 5 // 2} expired sessions removed\n"
    assert f"\r{BATCH} expired sessions removed so far" in shown
    assert f"\r{2 * BATCH} expired sessions removed so far" in shown
    assert shown.endswith("\r\x1b[K"), "the progress line is left on the terminal"


def test_cleanup_off_a_terminal_prints_only_the_result(
    filled: MemoryStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cron job's log gets one line, without carriage returns or escapes."""
    code = main(["cleanup", "--config", str(_ini(tmp_path))])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out == f"{BATCH * 5 // 2} expired sessions removed\n"


def test_short_cleanup_on_a_terminal_shows_no_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)

    code = main(["cleanup", "--config", str(_ini(tmp_path))])

    assert (code, terminal.getvalue()) == (0, "")
    assert capsys.readouterr().out == "0 expired sessions removed\n"


def test_stats_json_counts_live_sessions(
    filled: MemoryStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["stats", "--json", "--config", str(_ini(tmp_path))])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert json.loads(out) == {"live_sessions": 2, "store": "memory://"}
    assert out.count("\n") == 1


def test_stats_json_masks_the_store_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The URL is shown, its password never; a store that can't count gives null."""

    class Uncounted(MemoryStore):
        def count(self) -> None:
            return None

    monkeypatch.setattr(Config, "open_store", lambda self: Uncounted())
    ini = _ini(tmp_path, store="redis://:hunter2@127.0.0.1:6379/0")

    code = main(["stats", "--json", "--config", str(ini)])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert json.loads(out) == {"live_sessions": None, "store": "redis://:***@127.0.0.1:6379/0"}


def test_stats_json_on_a_store_failure_prints_nothing_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A script parsing stdout gets nothing to misread; the reason goes to stderr."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    ini = _ini(tmp_path, store=f"sqlite:///{blocker}/sub/sessions.db")

    code = main(["stats", "--json", "--config", str(ini)])

    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("wsgisession: store error:")


def test_json_is_only_an_option_of_stats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["check", "--json", "--config", "app.ini"])

    assert caught.value.code == 2
    assert "unrecognized arguments: --json" in capsys.readouterr().err


def test_commands_read_a_pastedeploy_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same production.ini PasteDeploy loads: ``session.`` keys of ``[app:main]``."""
    ini = tmp_path / "production.ini"
    ini.write_text(
        "[app:main]\nuse = egg:myapp\n"
        f"session.secret_key = {KEY}\nsession.store = sqlite:///%(here)s/sessions.db\n",
        encoding="utf-8",
    )

    code = main(["stats", "--json", "--config", str(ini)])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert json.loads(out) == {"live_sessions": 0, "store": f"sqlite:///{tmp_path}/sessions.db"}

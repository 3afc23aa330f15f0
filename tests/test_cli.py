"""The ``wsgisession`` command: check, cleanup, stats, and a user's sessions; their
output on a terminal and for scripts, and their exit statuses.

The behaviour is in docs/cli.rst. Most tests call :func:`wsgisession.cli.main`
in-process; one runs ``python -m wsgisession`` in a child process to prove the entry
point itself.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from werkzeug.test import Client

from tests.helpers import CHILD_ENV, SECRET, login, make_client
from wsgisession.cli import main
from wsgisession.config import Config
from wsgisession.purge import BATCH
from wsgisession.stores import Store
from wsgisession.stores.memory import MemoryStore
from wsgisession.testing import make_record, new_key


def _write_ini(path: Path, *lines: str, section: str = "session") -> Path:
    path.write_text("\n".join([f"[{section}]", *lines]) + "\n", encoding="utf-8")
    return path


def _ini(tmp_path: Path, store: str = "memory://") -> Path:
    return _write_ini(tmp_path / "app.ini", f"secret_key = {SECRET}", f"store = {store}")


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    """A valid ini file with a file store under *tmp_path* (not created yet)."""
    return _write_ini(
        tmp_path / "app.ini", f"secret_key = {SECRET}", f"store = file:{tmp_path / 'sessions'}"
    )


def _fill(ini: Path, *, expired: int, live: int) -> None:
    """Write records through the store the ini file configures."""
    with Config.from_ini(ini).open_store() as store:
        for _ in range(expired):
            assert store.save(new_key(), make_record(ttl=-5), expected_version=None)
        for _ in range(live):
            assert store.save(new_key(), make_record(ttl=3600), expected_version=None)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


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


# -- check, cleanup, stats ----------------------------------------------------------------


def test_check_on_a_valid_config_exits_0_with_one_line(
    ini: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "check", "--config", str(ini))

    assert (code, err) == (0, [])
    assert len(out) == 1
    assert out[0].startswith("ok") and "sessions" in out[0]
    assert (tmp_path / "sessions").is_dir()  # check reaches the store: it creates the directory


def test_check_reads_the_section_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_ini(
        tmp_path / "app.ini", f"secret_key = {SECRET}", "store = memory://", section="sess"
    )

    assert _run(capsys, "check", "--config", str(path), "--section", "sess")[0] == 0


def test_commands_read_a_pastedeploy_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same production.ini PasteDeploy loads: ``session.`` keys of ``[app:main]``."""
    ini = tmp_path / "production.ini"
    ini.write_text(
        "[app:main]\nuse = egg:myapp\n"
        f"session.secret_key = {SECRET}\nsession.store = sqlite:///%(here)s/sessions.db\n",
        encoding="utf-8",
    )

    code = main(["stats", "--json", "--config", str(ini)])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert json.loads(out) == {"live_sessions": 0, "store": f"sqlite:///{tmp_path}/sessions.db"}


def test_cleanup_removes_expired_records_and_prints_the_count(
    ini: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(ini, expired=3, live=2)

    code, out, err = _run(capsys, "cleanup", "--config", str(ini))

    assert (code, out, err) == (0, ["3 expired sessions removed"], [])
    with Config.from_ini(ini).open_store() as store:
        assert store.count() == 2
        assert store.cleanup() == 0


def test_cleanup_with_nothing_expired_prints_zero(
    ini: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(ini, expired=0, live=1)

    assert _run(capsys, "cleanup", "--config", str(ini)) == (
        0,
        ["0 expired sessions removed"],
        [],
    )


def test_cleanup_of_one_record_uses_the_singular(
    ini: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(ini, expired=1, live=0)

    assert _run(capsys, "cleanup", "--config", str(ini))[1] == ["1 expired session removed"]


def test_stats_prints_the_live_count(ini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(ini, expired=2, live=3)

    assert _run(capsys, "stats", "--config", str(ini)) == (0, ["live sessions: 3"], [])


def test_stats_on_an_empty_store_prints_zero(
    ini: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "stats", "--config", str(ini)) == (0, ["live sessions: 0"], [])


# -- on a terminal and for scripts ----------------------------------------------------------


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


# -- a user's sessions ----------------------------------------------------------------------


def test_sessions_lists_and_logout_ends_a_users_sessions(
    ini: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sessions --user`` lists a user's live sessions by handle, ``logout --user``
    ends them."""
    _, middleware = make_client({"/login": login}, store=f"file:{tmp_path / 'sessions'}")
    for _ in range(2):
        Client(middleware).get("/login")

    code, out, err = _run(capsys, "sessions", "--user", "ann", "--config", str(ini))
    assert (code, err) == (0, [])
    assert "2 live sessions of user 'ann'" in "\n".join(out)
    for info in middleware.user_sessions("ann"):
        assert any(info.handle in line for line in out)

    code, out, err = _run(capsys, "logout", "--user", "ann", "--config", str(ini))
    assert (code, err) == (0, [])
    assert "2 sessions of user 'ann' ended" in "\n".join(out)
    assert middleware.user_sessions("ann") == []
    code, out, _ = _run(capsys, "sessions", "--user", "ann", "--config", str(ini))
    assert code == 0 and "no live sessions" in "\n".join(out)


def test_user_commands_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.ini"
    bad.write_text("[session]\nstore = file:/tmp/x\n")
    assert main(["logout", "--user", "ann", "--config", str(bad)]) == 2
    assert "option 'secret_key'" in capsys.readouterr().err
    down = tmp_path / "down.ini"
    down.write_text(f"[session]\nsecret_key = {SECRET}\nstore = redis://127.0.0.1:1/0\n")
    assert main(["sessions", "--user", "ann", "--config", str(down)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wsgisession: store error") and err.count("\n") == 1


def test_a_user_id_from_undecodable_argv_exits_2_with_one_line(
    ini: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wsgisession sessions --user $'\\xff'`` arrives as a surrogate-escaped str: a
    usage error on one line, no traceback (docs/cli.rst)."""
    code, out, err = _run(capsys, "sessions", "--user", "\udcff", "--config", str(ini))
    assert (code, out) == (2, [])
    assert len(err) == 1 and err[0].startswith("wsgisession: bad --user")


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        pytest.param(["store = memory://"], "secret_key", id="missing-secret"),
        pytest.param([f"secret_key = {SECRET}", "timeuot = 5"], "timeuot", id="unknown-option"),
        pytest.param([f"secret_key = {SECRET}", "timeout = soon"], "timeout", id="bad-value"),
        pytest.param(
            [f"secret_key = {SECRET}", "store = mongo://x"], "mongo", id="unknown-scheme"
        ),
        pytest.param(
            [f"secret_key = {SECRET}", "store = memory://", "store.colour = red"],
            "colour",
            id="bad-store-option",
        ),
    ],
)
@pytest.mark.parametrize("command", ["check", "cleanup", "stats"])
def test_config_error_exits_2_with_one_line_on_stderr(
    command: str,
    lines: list[str],
    named: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _write_ini(tmp_path / "app.ini", *lines)

    code, out, err = _run(capsys, command, "--config", str(path))

    assert (code, out) == (2, [])
    assert len(err) == 1
    assert err[0].startswith("wsgisession: configuration error:") and named in err[0]


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "check", "--config", str(tmp_path / "nowhere.ini"))

    assert (code, out) == (2, [])
    assert len(err) == 1 and "nowhere.ini" in err[0]


def test_missing_section_exits_2(ini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "check", "--config", str(ini), "--section", "other")

    assert (code, out) == (2, [])
    assert len(err) == 1 and "[other]" in err[0]


@pytest.mark.parametrize("command", ["check", "cleanup", "stats"])
def test_store_failure_exits_1_with_one_line_on_stderr(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A regular file where a directory should be: the store can't be used."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    path = _write_ini(
        tmp_path / "app.ini", f"secret_key = {SECRET}", f"store = file:{blocker}/sub"
    )

    code, out, err = _run(capsys, command, "--config", str(path))

    assert (code, out) == (1, [])
    assert len(err) == 1
    assert err[0].startswith("wsgisession: store error:") and "blocker" in err[0]


@pytest.mark.parametrize("command", ["check", "stats", "stats --json"])
@pytest.mark.parametrize("password", ["hunter2", "hun@ter:2"])
def test_store_error_masks_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], password: str, command: str
) -> None:
    """Nothing listens on port 1, and no output may show the password, even one holding
    ``@``, ``:`` or ``/`` (the mask used to stop at the first ``@``)."""
    path = _write_ini(
        tmp_path / "app.ini",
        f"secret_key = {SECRET}",
        f"store = redis://:{password}@127.0.0.1:1/0",
        "store.socket_timeout = 2",
    )

    code, out, err = _run(capsys, *command.split(), "--config", str(path))

    assert (code, out) == (1, [])
    assert len(err) == 1 and "***" in err[0]
    for part in ("hunter2", "hun", "ter:2"):
        assert part not in err[0]


def test_a_url_the_driver_cannot_parse_is_refused_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``/`` in a password must be percent-encoded; unencoded, the URL's path starts
    inside the password, and the error must not quote that path."""
    path = _write_ini(
        tmp_path / "app.ini",
        f"secret_key = {SECRET}",
        "store = redis://:hun@ter:2/xyz@127.0.0.1/0",
    )

    code, out, err = _run(capsys, "check", "--config", str(path))

    assert (code, out) == (2, [])
    assert len(err) == 1
    for part in ("hun", "ter:2", "xyz"):
        assert part not in err[0]


def test_secret_is_never_printed(ini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["check", "--config", str(ini)])
    main(["stats", "--config", str(ini)])

    out, err = capsys.readouterr()
    assert SECRET not in out + err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["purge", "--config", "app.ini"], id="unknown-command"),
        pytest.param(["check"], id="no-config"),
    ],
)
def test_usage_error_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)

    out, err = capsys.readouterr()
    assert caught.value.code == 2
    assert out == "" and "usage: wsgisession" in err


# -- the real entry point ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "code", "stream"),
    [
        pytest.param([f"secret_key = {SECRET}"], 0, "stdout", id="valid"),
        pytest.param(["timeout = 5"], 2, "stderr", id="config-error"),
    ],
)
def test_python_dash_m_wsgisession_runs_the_command(
    lines: list[str], code: int, stream: str, tmp_path: Path
) -> None:
    path = _write_ini(tmp_path / "app.ini", *lines, f"store = file:{tmp_path / 'sessions'}")

    result = subprocess.run(
        [sys.executable, "-m", "wsgisession", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )

    assert result.returncode == code
    printed = result.stdout if stream == "stdout" else result.stderr
    silent = result.stderr if stream == "stdout" else result.stdout
    assert len(printed.splitlines()) == 1 and silent == ""

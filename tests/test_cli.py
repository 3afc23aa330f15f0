"""The ``wsgisession`` command: check, cleanup and stats, and their exit statuses.

Most tests call :func:`wsgisession.cli.main` in-process; one runs
``python -m wsgisession`` in a child process to prove the entry point itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CHILD_ENV
from wsgisession.cli import main
from wsgisession.config import Config
from wsgisession.testing import make_record, new_key

KEY = "a-long-random-test-secret-for-the-test-suite"


def _write_ini(path: Path, *lines: str, section: str = "session") -> Path:
    path.write_text("\n".join([f"[{section}]", *lines]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    """A valid ini file with a file store under *tmp_path* (not created yet)."""
    return _write_ini(
        tmp_path / "app.ini", f"secret_key = {KEY}", f"store = file:{tmp_path / 'sessions'}"
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


# -- success ---------------------------------------------------------------------------------


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
        tmp_path / "app.ini", f"secret_key = {KEY}", "store = memory://", section="sess"
    )

    assert _run(capsys, "check", "--config", str(path), "--section", "sess")[0] == 0


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


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        pytest.param(["store = memory://"], "secret_key", id="missing-secret"),
        pytest.param([f"secret_key = {KEY}", "timeuot = 5"], "timeuot", id="unknown-option"),
        pytest.param([f"secret_key = {KEY}", "timeout = soon"], "timeout", id="bad-value"),
        pytest.param([f"secret_key = {KEY}", "store = mongo://x"], "mongo", id="unknown-scheme"),
        pytest.param(
            [f"secret_key = {KEY}", "store = memory://", "store.colour = red"],
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
    path = _write_ini(tmp_path / "app.ini", f"secret_key = {KEY}", f"store = file:{blocker}/sub")

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
        f"secret_key = {KEY}",
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
        tmp_path / "app.ini", f"secret_key = {KEY}", "store = redis://:hun@ter:2/xyz@127.0.0.1/0"
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
    assert KEY not in out + err


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
        pytest.param([f"secret_key = {KEY}"], 0, "stdout", id="valid"),
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

"""The ``wsgisession`` command: check, cleanup, stats, a user's sessions and one
session; options from an ini file or the environment; their output on a terminal and
for scripts, and their exit statuses.

The behaviour is in docs/cli.rst. Most tests call :func:`wsgisession.cli.main`
in-process; a few run ``python -m wsgisession`` in a child process to prove the entry
point itself. Listing and ending sessions runs against every store a second process
can reach (all but the memory store).
"""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from tests.helpers import (
    CHILD_ENV,
    SECRET,
    STORE_KINDS,
    TEST_VARIABLES,
    free_ports,
    isolation_options,
    login,
    make_client,
    open_test_store,
    store_url,
)
from wsgisession import cli
from wsgisession._cli_output import iso_time, relative_time
from wsgisession.cli import main
from wsgisession.config import OPTIONS, Config
from wsgisession.purge import BATCH
from wsgisession.stores import Store
from wsgisession.stores.memory import MemoryStore
from wsgisession.testing import make_record, new_key


def _write_ini(path: Path, *lines: str, section: str = "session") -> Path:
    path.write_text("\n".join([f"[{section}]", *lines]) + "\n", encoding="utf-8")
    return path


def _ini(tmp_path: Path, store: str | None = None) -> Path:
    """An ini file on *store*, a file store under *tmp_path* unless given: a memory store
    lives in each application process, so the command line refuses it."""
    store = f"file:{tmp_path / 'sessions'}" if store is None else store
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


def test_check_prints_every_option_and_where_it_was_set(
    ini: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "check", "--config", str(ini))

    assert (code, err) == (0, [])
    assert out[0].split() == ["OPTION", "VALUE", "SOURCE"]
    rows = {line.split()[0]: line.split(maxsplit=2)[1:] for line in out[1:-1]}
    assert list(rows) == [option.name for option in OPTIONS]
    assert rows["secret_key"] == ["'***'", f"[session] of {ini}"]
    assert rows["store"] == [repr(f"file:{tmp_path / 'sessions'}"), f"[session] of {ini}"]
    assert rows["timeout"] == ["3600", "default"]
    assert out[-1].startswith("ok") and "sessions" in out[-1]
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
    assert json.loads(out) == {"live_sessions": 2, "store": f"file:{tmp_path / 'sessions'}"}
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


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_stats_on_an_unreachable_store_that_cant_count_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    # Memcached can't count, so nothing asked it: a down server read as "unknown", exit 0.
    (port,) = free_ports(1)
    ini = _ini(tmp_path, store=f"memcached://127.0.0.1:{port}")

    code = main(["stats", *(["--json"] if as_json else []), "--config", str(ini)])

    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("wsgisession: store error:")


@pytest.mark.parametrize("command", ["cleanup", "stats", "sessions", "logout", "end"])
def test_a_memory_store_is_out_of_the_command_lines_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # The command line's own memory store is empty: "0 removed", "0 live" said nothing.
    ini = _ini(tmp_path, store="memory://")
    extra = {"sessions": ["--user", "ann"], "logout": ["--user", "ann"], "end": ["a" * 64]}
    code, out, err = _run(capsys, command, *extra.get(command, []), "--config", str(ini))
    assert (code, out) == (cli.EXIT_CONFIG, [])
    assert err == [
        "wsgisession: configuration error: store 'memory://' lives in each application "
        "process: the command line, a process of its own, can't reach its sessions; give "
        "the application a file, SQL, Redis or memcached store to manage them from here"
    ]


def test_check_of_a_memory_store_says_what_it_can_and_cant_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "check", "--config", str(_ini(tmp_path, store="memory://")))
    assert code == 0
    assert out[-1].startswith("ok: configuration valid, store memory:// lives in each")


def test_json_is_only_an_option_of_stats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["check", "--json", "--config", "app.ini"])

    assert caught.value.code == 2
    assert "unrecognized arguments: --json" in capsys.readouterr().err


# -- a user's sessions, and one session ---------------------------------------------------

#: Every store another process can reach: a memory store lives and dies with its process.
SHARED_KINDS = [kind for kind in STORE_KINDS if getattr(kind, "values", [kind])[0] != "memory"]


@pytest.fixture(params=SHARED_KINDS)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    """A fresh store of each kind, and an ini file that configures the same store."""
    kind: str = request.param
    options = isolation_options(kind)
    lines = [f"store.{name} = {value}" for name, value in options.items()]
    path = _write_ini(
        tmp_path / "app.ini",
        f"secret_key = {SECRET}",
        f"store = {store_url(kind, request, tmp_path)}",
        *lines,
    )
    for store in open_test_store(kind, request, tmp_path, **options):
        yield store, path


def _meta(remembered: bool = False, agent: str | None = None, address: str | None = None) -> bytes:
    """A record's meta as the middleware writes it (remember-me, ``track_clients``)."""
    fields = {"r": remembered, "ua": agent, "ra": address}
    return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()


def _save(store: Store, user: str, ttl: float = 3600, **meta: Any) -> str:
    key = new_key()
    record = make_record(user_id=user, ttl=ttl, meta=_meta(**meta))
    assert store.save(key, record, expected_version=None)
    return key


def test_sessions_lists_a_users_sessions_under_a_header(
    shared: tuple[Store, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store, ini = shared
    remembered, forgotten = _save(store, "ann", remembered=True), _save(store, "ann", ttl=60)
    _save(store, "bob")

    code, out, err = _run(capsys, "sessions", "--user", "ann", "--config", str(ini))

    assert (code, err) == (0, [])
    assert out[0] == "2 live sessions of user 'ann':"
    assert _columns(out[1]) == ["HANDLE", "REMEMBERED", "CREATED", "LAST SEEN", "EXPIRES"]
    rows = {row[0]: row[1:] for row in map(_columns, out[2:])}
    assert set(rows) == {remembered, forgotten}
    assert (rows[remembered][0], rows[forgotten][0]) == ("yes", "no")
    for _, created, last_seen, expires in rows.values():
        assert re.fullmatch(r"now|\d+s ago", created), created
        assert re.fullmatch(r"now|\d+s ago", last_seen), last_seen
        assert re.fullmatch(r"in \d+[smh]", expires), expires


def _columns(line: str) -> list[str]:
    """The cells of a table row: columns are two or more spaces apart."""
    return re.split(r" {2,}", line)


@pytest.mark.parametrize(
    ("offset", "shown"),
    [
        pytest.param(0.3, "now", id="now"),
        pytest.param(-42, "42s ago", id="seconds"),
        pytest.param(-150, "2m ago", id="minutes"),
        pytest.param(3 * 3600 + 5, "in 3h", id="hours"),
        pytest.param(30 * 86400, "in 30d", id="days"),
    ],
)
def test_session_times_show_in_their_largest_whole_unit(offset: float, shown: str) -> None:
    assert relative_time(1_000_000 + offset, 1_000_000) == shown


def test_a_time_no_date_holds_shows_without_failing_the_listing(
    ini: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A record changed by hand: the listing raised OverflowError with a traceback.
    with Config.from_ini(ini).open_store() as store:
        key = new_key()
        assert store.save(key, make_record(user_id="ann", ttl=math.inf), expected_version=None)
    code, out, err = _run(capsys, "sessions", "--user", "ann", "--config", str(ini))
    assert (code, err) == (0, [])
    assert _columns(out[2])[-1] == "never"
    code = main(["sessions", "--user", "ann", "--json", "--config", str(ini)])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["sessions"][0]["expires_at"] is None
    assert iso_time(1e20) is None and relative_time(math.nan, 0) == "never"


def test_sessions_json_gives_every_field_for_scripts(
    shared: tuple[Store, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store, ini = shared
    key = _save(store, "ann", remembered=True)

    code = main(["sessions", "--user", "ann", "--json", "--config", str(ini)])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    listed = json.loads(out)
    assert listed["user"] == "ann" and len(listed["sessions"]) == 1
    session = listed["sessions"][0]
    assert (session["handle"], session["remembered"]) == (key, True)
    assert (session["remote_addr"], session["user_agent"]) == (None, None)
    for name in ("created_at", "last_seen", "expires_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", session[name]), name


def test_sessions_json_of_a_user_without_sessions_is_an_empty_list(
    ini: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sessions", "--user", "ann", "--json", "--config", str(ini)])

    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"user": "ann", "sessions": []}


def test_sessions_shows_tracked_clients_with_their_control_characters_escaped(
    ini: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user agent is whatever the client sent: an escape sequence in it must not reach
    the operator's terminal. A long one is cut; ``--json`` has it whole."""
    agent = "Evil/1.0 \x1b[2J\x1b]0;pwned\x07" + "x" * 80
    with Config.from_ini(ini).open_store() as store:
        _save(store, "ann", agent=agent, address="192.0.2.7")
        _save(store, "ann")

    code, out, _ = _run(capsys, "sessions", "--user", "ann", "--config", str(ini))

    assert code == 0
    assert _columns(out[1])[-3:] == ["EXPIRES", "ADDRESS", "USER AGENT"]
    shown = "\n".join(out)
    assert "\x1b" not in shown and "\x07" not in shown
    assert "Evil/1.0 \\x1b[2J\\x1b]0;pwned\\x07xxx" in shown
    assert "192.0.2.7" in shown and shown.count("…") == 1
    assert any(_columns(line)[-2:] == ["-", "-"] for line in out[2:])  # the untracked one


def test_end_ends_one_session_then_finds_it_gone(
    shared: tuple[Store, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store, ini = shared
    ended, kept = _save(store, "ann"), _save(store, "ann")

    assert _run(capsys, "end", ended, "--config", str(ini)) == (
        0,
        [f"session {ended} ended"],
        [],
    )
    assert store.load(ended) is None and store.load(kept) is not None
    code, out, err = _run(capsys, "end", ended, "--config", str(ini))
    assert (code, out) == (cli.EXIT_NOT_FOUND, [])
    assert err == [f"wsgisession: no live session has handle {ended}"]


def test_end_and_logout_leave_a_regenerated_sessions_tombstone(
    shared: tuple[Store, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # They deleted it, as end_session() does not: a late request with the old cookie
    # then got a new session, whose cookie replaced the browser's new one.
    store, ini = shared
    old = _save(store, "ann")
    stone = make_record(b"", version=0, ttl=60)
    moved = make_record(user_id="ann")
    assert store.save(
        new_key(), moved, expected_version=None, replaces=old, replaces_version=1, tombstone=stone
    )
    assert _run(capsys, "end", old, "--config", str(ini))[0] == cli.EXIT_NOT_FOUND
    code = main(["logout", "--user", "ann", "--config", str(ini)])
    capsys.readouterr()
    assert code == 0
    kept = store.load(old)
    assert kept is not None and kept.version == 0


@pytest.mark.parametrize(
    "handle",
    [
        pytest.param("abc", id="short"),
        pytest.param("A" * 64, id="upper-case"),
        pytest.param("g" * 64, id="not-hex"),
        pytest.param("../" + "a" * 61, id="path"),
    ],
)
def test_end_of_something_that_is_no_handle_is_a_usage_error(
    handle: str, ini: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "end", handle, "--config", str(ini))

    assert (code, out) == (2, [])
    assert len(err) == 1 and err[0].startswith("wsgisession: bad HANDLE")


def test_end_without_a_handle_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["end", "--config", "app.ini"])

    assert caught.value.code == 2
    assert "required: HANDLE" in capsys.readouterr().err


def test_sessions_lists_and_logout_ends_a_users_sessions(
    ini: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sessions --user`` lists the sessions the middleware made at login, ``logout
    --user`` ends them."""
    _, middleware = make_client({"/login": login}, store=f"file:{tmp_path / 'sessions'}")
    for _ in range(2):
        Client(middleware).get("/login")

    code, out, err = _run(capsys, "sessions", "--user", "ann", "--config", str(ini))
    assert (code, err) == (0, [])
    assert "2 live sessions of user 'ann'" in "\n".join(out)
    for info in middleware.user_sessions("ann"):
        assert any(info.handle in line for line in out)

    code, out, err = _run(capsys, "logout", "--user", "ann", "--config", str(ini))
    assert (code, out, err) == (0, ["2 sessions of user 'ann' ended"], [])
    assert middleware.user_sessions("ann") == []
    code, out, _ = _run(capsys, "sessions", "--user", "ann", "--config", str(ini))
    assert code == 0 and "no live sessions" in "\n".join(out)


def _many_sessions(tmp_path: Path, count: int) -> Path:
    """An ini file whose SQLite store holds *count* sessions of ann."""
    ini = _ini(tmp_path, store=f"sqlite:///{tmp_path / 'sessions.db'}")
    with Config.from_ini(ini).open_store() as store:
        for _ in range(count):
            _save(store, "ann")
    return ini


def test_logout_on_a_terminal_shows_progress_then_clears_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    count = cli.LOGOUT_STEP * 2 + 50
    ini = _many_sessions(tmp_path, count)
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)

    code = main(["logout", "--user", "ann", "--config", str(ini)])

    shown = terminal.getvalue()
    assert code == 0
    assert capsys.readouterr().out == f"{count} sessions of user 'ann' ended\n"
    for done in (cli.LOGOUT_STEP, 2 * cli.LOGOUT_STEP):
        assert f"\r{done} of {count} sessions of user 'ann' ended so far..." in shown
    assert shown.endswith("\r\x1b[K"), "the progress line is left on the terminal"


def test_logout_off_a_terminal_prints_only_the_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = _many_sessions(tmp_path, cli.LOGOUT_STEP + 1)

    code = main(["logout", "--user", "ann", "--config", str(ini)])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out == f"{cli.LOGOUT_STEP + 1} sessions of user 'ann' ended\n"


def test_logout_counts_sessions_that_ended_meanwhile_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A session the application ends between the listing and the delete is not
    counted as ended by the command."""
    ini = _many_sessions(tmp_path, 3)
    listing = cli.list_user_sessions

    def then_one_ends(
        store: Store, user_id: str, now: float, absolute_timeout: int | None
    ) -> list[Any]:
        infos = listing(store, user_id, now, absolute_timeout)
        assert store.delete(infos[0].handle)
        return infos

    monkeypatch.setattr(cli, "list_user_sessions", then_one_ends)

    code, out, _ = _run(capsys, "logout", "--user", "ann", "--config", str(ini))

    assert (code, out) == (0, ["2 sessions of user 'ann' ended (1 had ended meanwhile)"])


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
    # Redis expires sessions itself, so cleanup removes nothing, but down is down.
    assert main(["cleanup", "--config", str(down)]) == 1
    assert capsys.readouterr().err.startswith("wsgisession: store error")


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
            [f"secret_key = {SECRET}", "store = file:./sessions", "store.colour = red"],
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


# -- options from the environment ------------------------------------------------------------


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The process environment of an application configured by ``from_env``: no other
    ``WSGISESSION_`` variable (the suite's own are set on purpose where tested), a
    file store under *tmp_path*, which is returned."""
    for variable in [v for v in CHILD_ENV if v.startswith("WSGISESSION_")]:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WSGISESSION_SECRET_KEY", SECRET)
    monkeypatch.setenv("WSGISESSION_STORE", f"file:{tmp_path / 'sessions'}")
    monkeypatch.setenv("WSGISESSION_STORE_SHARD_DEPTH", "1")
    return tmp_path / "sessions"


def test_check_env_shows_the_variable_each_option_came_from(
    environment: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WSGISESSION_TIMEOUT", "1800")

    code, out, err = _run(capsys, "check", "--env")

    assert (code, err) == (0, [])
    rows = {row[0]: row[1:] for row in map(_columns, out[1:-1])}
    assert rows["timeout"] == ["1800", "environment variable WSGISESSION_TIMEOUT"]
    assert rows["store.shard_depth"] == ["1", "environment variable WSGISESSION_STORE_SHARD_DEPTH"]
    assert rows["secret_key"] == ["'***'", "environment variable WSGISESSION_SECRET_KEY"]
    assert rows["cookie_name"] == ["'session_id'", "default"]
    assert out[-1].startswith("ok") and environment.is_dir()


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["cleanup"], id="cleanup"),
        pytest.param(["stats"], id="stats"),
        pytest.param(["sessions", "--user", "ann"], id="sessions"),
        pytest.param(["logout", "--user", "ann"], id="logout"),
    ],
)
def test_every_command_reads_the_environment(
    argv: list[str], environment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Config.from_env().open_store() as store:
        _save(store, "ann")
        assert store.save(new_key(), make_record(ttl=-5), expected_version=None)

    code, out, err = _run(capsys, *argv, "--env")

    assert (code, err) == (0, [])
    assert out[0] in (
        "1 expired session removed",
        "live sessions: 1",
        "1 live session of user 'ann':",
        "1 session of user 'ann' ended",
    )


def test_end_reads_the_environment_with_the_handle_before_or_after(
    environment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--env`` takes an optional prefix, so ``end --env HANDLE`` must not read the
    handle as the prefix."""
    with Config.from_env().open_store() as store:
        first, second = _save(store, "ann"), _save(store, "ann")

    assert _run(capsys, "end", first, "--env")[:2] == (0, [f"session {first} ended"])
    assert _run(capsys, "end", "--env", second)[:2] == (0, [f"session {second} ended"])
    assert _run(capsys, "end", "--env", second)[0] == cli.EXIT_NOT_FOUND


def test_env_takes_another_prefix(
    environment: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHOP_SESSION_SECRET_KEY", SECRET)
    monkeypatch.setenv("SHOP_SESSION_STORE", f"sqlite:///{environment.parent / 'shop.db'}")

    code, out, err = _run(capsys, "stats", "--env", "SHOP_SESSION_")

    assert (code, out, err) == (0, ["live sessions: 0"], [])
    assert (environment.parent / "shop.db").exists()


def test_env_refuses_an_unknown_variable_unless_told_to_ignore_it(
    environment: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WSGISESSION_TIMOUT", "1800")
    monkeypatch.setenv("WSGISESSION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

    code, out, err = _run(capsys, "check", "--env", "--env-ignore", "WSGISESSION_TEST_*")
    assert (code, out) == (2, [])
    assert len(err) == 1
    assert "unknown environment variable WSGISESSION_TIMOUT; did you mean" in err[0]

    argv = ["check", "--env", "--env-ignore", "WSGISESSION_TEST_*"]
    code, out, err = _run(capsys, *argv, "--env-ignore", "WSGISESSION_TIMOUT")
    assert (code, err) == (0, [])


def test_a_store_refusal_from_env_names_the_variable(
    environment: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WSGISESSION_STORE_SHARD_DEPTH", "deep")

    code, out, err = _run(capsys, "check", "--env")

    assert (code, out) == (2, [])
    assert len(err) == 1
    assert err[0].startswith(
        "wsgisession: configuration error: environment variable "
        "WSGISESSION_STORE_SHARD_DEPTH: store option 'shard_depth' must be"
    )


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        pytest.param(["--env", "--section", "x"], "--section goes with --config", id="section"),
        pytest.param(
            ["--config", "app.ini", "--env-ignore", "X"],
            "--env-ignore goes with --env",
            id="ignore",
        ),
        pytest.param(["--config", "app.ini", "--env"], "not allowed with", id="both"),
    ],
)
def test_a_source_given_wrongly_is_a_usage_error(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["check", *argv])

    assert caught.value.code == 2
    assert said in capsys.readouterr().err


# -- the real entry point ------------------------------------------------------------------


def _child(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsgisession", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


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

    result = _child(["check", "--config", str(path)], CHILD_ENV, tmp_path)

    assert result.returncode == code
    printed = result.stdout if stream == "stdout" else result.stderr
    silent = result.stderr if stream == "stdout" else result.stdout
    assert silent == ""
    if code == 0:
        assert printed.splitlines()[-1].startswith("ok: configuration valid")
    else:
        assert len(printed.splitlines()) == 1


def test_python_dash_m_wsgisession_reads_the_environment_of_a_ci_job(tmp_path: Path) -> None:
    """CI exports the suite's own variables (``WSGISESSION_REQUIRE_SERVICES=1``): a
    command reading the environment names the first it does not know, and runs once
    they are ignored."""
    env = {name: value for name, value in CHILD_ENV.items() if not name.startswith("WSGISESSION_")}
    env |= {
        "WSGISESSION_SECRET_KEY": SECRET,
        "WSGISESSION_STORE": f"file:{tmp_path / 'sessions'}",
        "WSGISESSION_REQUIRE_SERVICES": "1",
        "WSGISESSION_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
    }

    refused = _child(["stats", "--env"], env, tmp_path)
    ignoring = [f"--env-ignore={pattern}" for pattern in TEST_VARIABLES]
    accepted = _child(["stats", "--env", *ignoring], env, tmp_path)

    assert (refused.returncode, refused.stdout) == (2, "")
    assert "unknown environment variable WSGISESSION_REQUIRE_SERVICES" in refused.stderr
    assert (accepted.returncode, accepted.stdout, accepted.stderr) == (0, "live sessions: 0\n", "")

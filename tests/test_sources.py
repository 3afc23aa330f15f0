"""Configuration people already have: environment variables, PasteDeploy files and filters.

The environment spelling is checked against the ini spelling option by option, over
the same table of values that ``test_config`` builds every option from, so the two
cannot drift apart. PasteDeploy is driven through a real ``paste.deploy.loadapp``.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from werkzeug.test import Client

from tests.test_config import VALID, _resolve, helper
from wsgisession import ConfigError, SessionMiddleware, get_session
from wsgisession.config import Config

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["helper"]  # the fixture, imported so that the VALID cases can name its objects

KEY = "a-long-random-test-secret-for-the-test-suite"


def counter(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Count this session's requests."""
    session = get_session(environ)
    session["count"] = session.get("count", 0) + 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(session["count"]).encode()]


def app_factory(global_conf: dict[str, str], **settings: str) -> WSGIApplication:
    """A PasteDeploy app factory for the counter."""
    return counter


def wrapping_app_factory(global_conf: dict[str, str], **settings: str) -> WSGIApplication:
    """An app factory that wraps itself from its own file's ``session.`` keys, as a
    Pyramid or Pylons application would."""
    return SessionMiddleware.from_ini(counter, global_conf["__file__"])


def _counts(app: Any, times: int = 2) -> list[str]:
    client = Client(app)
    return [client.get("/").get_data(as_text=True) for _ in range(times)]


@pytest.fixture
def closing() -> Iterator[list[SessionMiddleware]]:
    """Middlewares to close after the test."""
    made: list[SessionMiddleware] = []
    yield made
    for middleware in made:
        middleware.close()


# -- environment variables ----------------------------------------------------------------


def _ini_to_env(lines: list[str]) -> dict[str, str]:
    """The environment variables that say what *lines* of a [session] section say."""
    parser = configparser.RawConfigParser()
    parser.read_string("[session]\n" + "\n".join(lines) + "\n")
    env = {}
    for name, value in parser.items("session"):
        variable = name.replace(".", "_").upper()
        env[f"WSGISESSION_{variable}"] = value
    return env


@pytest.mark.parametrize(("name", "value", "ini_lines"), VALID)
def test_every_option_reads_from_its_environment_variable(
    name: str, value: Any, ini_lines: list[str], helper: ModuleType, tmp_path: Path
) -> None:
    lines = [line.replace("{module}", helper.__name__) for line in ini_lines]
    if name != "secret_key":
        lines.insert(0, f"secret_key = {KEY}")
    ini = tmp_path / "app.ini"
    ini.write_text("[session]\n" + "\n".join(lines) + "\n", encoding="utf-8")

    from_env = Config.from_env(environ=_ini_to_env(lines))

    assert getattr(from_env, name) == _resolve(value, helper)
    assert from_env == Config.from_ini(ini)


def test_store_variables_become_store_options() -> None:
    config = Config.from_env(
        environ={
            "WSGISESSION_SECRET_KEY": KEY,
            "WSGISESSION_STORE": "sqlite:///sessions.db",
            "WSGISESSION_STORE_TABLE_NAME": "web_sessions",
            "WSGISESSION_STORE_POOL_SIZE": "5",
            "WSGISESSION_STORE_CONNECT_ARGS": '{"timeout": 3}',
        }
    )

    assert config.store == "sqlite:///sessions.db"
    assert config.store_options == {
        "table_name": "web_sessions",
        "pool_size": 5,
        "connect_args": {"timeout": 3},
    }


def test_store_variables_win_over_the_store_options_json() -> None:
    """``WSGISESSION_STORE_OPTIONS`` is the option of that name; a store option of its
    own beside it is more specific and wins, as ``store.NAME`` keys do in ini files."""
    config = Config.from_env(
        environ={
            "WSGISESSION_SECRET_KEY": KEY,
            "WSGISESSION_STORE_OPTIONS": '{"shard_depth": 1, "fsync": true}',
            "WSGISESSION_STORE_SHARD_DEPTH": "3",
        }
    )

    assert config.store_options == {"shard_depth": 3, "fsync": True}


def test_other_variables_are_ignored() -> None:
    """The test suite's own variables share the prefix and must not be read as options."""
    config = Config.from_env(
        environ={
            "WSGISESSION_SECRET_KEY": KEY,
            "WSGISESSION_REQUIRE_SERVICES": "1",
            "WSGISESSION_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
            "WSGISESSION_timeout": "not upper case, not read",
            "WSGISESSION_STORE_": "no store option name",
            "TIMEOUT": "5",
            "SESSION_TIMEOUT": "5",
        }
    )

    assert config == Config.from_options(secret_key=KEY)


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        pytest.param("WSGISESSION_TIMEOUT", "soon", id="not-a-number"),
        pytest.param("WSGISESSION_TIMEOUT", "0", id="out-of-range"),
        pytest.param("WSGISESSION_SAVE_EVERY_REQUEST", "maybe", id="not-a-bool"),
        pytest.param("WSGISESSION_COOKIE_SAMESITE", "Sideways", id="not-a-samesite"),
        pytest.param("WSGISESSION_COOKIE_NAME", "a b", id="not-a-token"),
        pytest.param("WSGISESSION_SERIALIZER", "nowhere.at.all:thing", id="not-importable"),
        pytest.param("WSGISESSION_STORE_OPTIONS", "{not json", id="bad-json"),
        pytest.param("WSGISESSION_STORE_CONNECT_ARGS", "{not json", id="bad-store-json"),
        pytest.param("WSGISESSION_SECRET_KEY", "", id="empty-secret"),
    ],
)
def test_bad_value_raises_config_error_naming_the_variable(variable: str, text: str) -> None:
    environ = {"WSGISESSION_SECRET_KEY": KEY, variable: text}

    with pytest.raises(ConfigError, match=f"environment variable {variable}:"):
        Config.from_env(environ=environ)


def test_missing_secret_key_names_the_variable_to_set() -> None:
    with pytest.raises(ConfigError, match="WSGISESSION_SECRET_KEY is not set"):
        Config.from_env(environ={"WSGISESSION_TIMEOUT": "60"})


def test_contradicting_variables_are_refused() -> None:
    environ = {
        "WSGISESSION_SECRET_KEY": KEY,
        "WSGISESSION_COOKIE_SECURE": "false",
        "WSGISESSION_COOKIE_SAMESITE": "None",
    }

    with pytest.raises(ConfigError, match="cookie_samesite"):
        Config.from_env(environ=environ)


def test_another_prefix_reads_only_its_own_variables() -> None:
    config = Config.from_env(
        "SHOP_SESSION_",
        {
            "SHOP_SESSION_SECRET_KEY": KEY,
            "SHOP_SESSION_TIMEOUT": "120",
            "WSGISESSION_TIMEOUT": "60",
        },
    )

    assert (config.secret_key, config.timeout) == (KEY, 120)


def test_middleware_from_env_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, closing: list[SessionMiddleware]
) -> None:
    monkeypatch.setenv("WSGISESSION_SECRET_KEY", KEY)
    monkeypatch.setenv("WSGISESSION_STORE", f"file:{tmp_path / 'sessions'}")
    monkeypatch.setenv("WSGISESSION_STORE_SHARD_DEPTH", "1")
    monkeypatch.setenv("WSGISESSION_CLEANUP_INTERVAL", "0")
    monkeypatch.setenv("WSGISESSION_COOKIE_NAME", "sid")

    app = SessionMiddleware.from_env(counter)
    closing.append(app)

    assert app.config.store_options == {"shard_depth": 1}
    client = Client(app)
    assert [client.get("/").get_data(as_text=True) for _ in range(2)] == ["1", "2"]
    assert client.get_cookie("sid") is not None


def test_unknown_store_option_from_env_is_refused_when_the_middleware_is_built() -> None:
    environ = {
        "WSGISESSION_SECRET_KEY": KEY,
        "WSGISESSION_STORE": "memory://",
        "WSGISESSION_STORE_COLOUR": "red",
    }

    with pytest.raises(ConfigError, match="colour"):
        SessionMiddleware.from_env(counter, environ=environ)


# -- session.* keys of a PasteDeploy [app:main] ----------------------------------------------

PASTE_APP_MAIN = """
    [DEFAULT]
    debug = true

    [app:main]
    use = call:tests.test_sources:wrapping_app_factory
    sqlalchemy.url = sqlite:///%(here)s/app.db
    session.secret_key = {key}
    session.store = file:%(here)s/sessions
    session.store.shard_depth = 1
    session.timeout = 600
    session.cleanup_interval = 0

    [server:main]
    use = egg:waitress#main
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def test_from_ini_reads_the_session_keys_of_app_main(tmp_path: Path) -> None:
    path = _write(tmp_path / "production.ini", PASTE_APP_MAIN.format(key=KEY))

    config = Config.from_ini(path)

    assert config.secret_key == KEY
    assert config.store == f"file:{tmp_path}/sessions"  # %(here)s, as PasteDeploy reads it
    assert config.store_options == {"shard_depth": 1}
    assert (config.timeout, config.cleanup_interval) == (600, 0)


def test_app_main_values_follow_pastedeploy_escaping(tmp_path: Path) -> None:
    """In a PasteDeploy file ``%%`` is a literal ``%``, as PasteDeploy itself reads it."""
    path = _write(
        tmp_path / "app.ini",
        """
        [app:main]
        session.secret_key = 100%%-random-and-long-enough-for-a-key
        """,
    )

    assert Config.from_ini(path).secret_key == "100%-random-and-long-enough-for-a-key"


def test_a_session_section_wins_over_app_main(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "app.ini",
        f"""
        [app:main]
        session.secret_key = from-app-main
        session.timeout = 5

        [session]
        secret_key = {KEY}
        """,
    )

    config = Config.from_ini(path)

    assert (config.secret_key, config.timeout) == (KEY, 3600)


def test_the_section_name_is_the_key_prefix(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "app.ini",
        f"""
        [app:main]
        session.timeout = 5
        auth_session.secret_key = {KEY}
        auth_session.timeout = 60
        """,
    )

    config = Config.from_ini(path, section="auth_session")

    assert (config.secret_key, config.timeout) == (KEY, 60)


def test_app_main_without_session_keys_is_a_config_error(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "app.ini",
        """
        [app:main]
        use = egg:myapp
        """,
    )

    with pytest.raises(ConfigError, match=r"no \[session\] section and no 'session\.' keys"):
        Config.from_ini(path)


def test_unknown_session_key_in_app_main_is_refused_naming_it(tmp_path: Path) -> None:
    """Beaker's ``session.type`` left behind in a migrated file is an error, not ignored."""
    path = _write(
        tmp_path / "app.ini",
        f"""
        [app:main]
        session.secret_key = {KEY}
        session.type = file
        """,
    )

    with pytest.raises(ConfigError, match="'type'"):
        Config.from_ini(path)


def test_bad_interpolation_in_app_main_is_a_config_error(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "app.ini",
        """
        [app:main]
        session.secret_key = %(nowhere)s
        """,
    )

    with pytest.raises(ConfigError, match="app.ini"):
        Config.from_ini(path)


# -- PasteDeploy ------------------------------------------------------------------------------

loadwsgi = pytest.importorskip("paste.deploy.loadwsgi")


def _loadapp(path: Path) -> Any:
    return loadwsgi.loadapp(f"config:{path}")


def test_the_filter_factory_is_declared_as_egg_wsgisession() -> None:
    """``use = egg:wsgisession`` looks up ``main`` in this group; if this fails, the
    package needs reinstalling (``pip install -e .``) to register its entry points."""
    found = importlib.metadata.entry_points(group="paste.filter_factory", name="main")

    assert "wsgisession.paste:filter_factory" in {entry.value for entry in found}


def _filtered_app(tmp_path: Path, *options: str) -> Path:
    """An ini file whose ``[app:main]`` is filtered with wsgisession, given *options*."""
    return _write(
        tmp_path / "app.ini",
        "[app:main]\n"
        "use = call:tests.test_sources:app_factory\n"
        "filter-with = session\n\n"
        "[filter:session]\n"
        "use = egg:wsgisession\n"
        f"secret_key = {KEY}\n" + "".join(f"{line}\n" for line in options),
    )


def test_filter_with_wraps_the_app(tmp_path: Path, closing: list[SessionMiddleware]) -> None:
    path = _filtered_app(
        tmp_path,
        "store = file:%(here)s/sessions",
        "store.shard_depth = 1",
        "timeout = 900",
        "cleanup_interval = 0",
    )

    app = _loadapp(path)
    closing.append(app)

    assert isinstance(app, SessionMiddleware) and app.app is counter
    assert app.config.store == f"file:{tmp_path}/sessions"
    assert (app.config.store_options, app.config.timeout) == ({"shard_depth": 1}, 900)
    assert _counts(app) == ["1", "2"]
    assert any((tmp_path / "sessions").rglob("*")), "the configured file store was not used"


def test_pipeline_wraps_the_app(tmp_path: Path, closing: list[SessionMiddleware]) -> None:
    path = _write(
        tmp_path / "app.ini",
        f"""
        [DEFAULT]
        debug = true

        [pipeline:main]
        pipeline = session counter

        [filter:session]
        use = egg:wsgisession
        secret_key = {KEY}
        store = memory://
        cookie_name = shop_session

        [app:counter]
        use = call:tests.test_sources:app_factory
        """,
    )

    app = _loadapp(path)
    closing.append(app)

    assert isinstance(app, SessionMiddleware)
    assert app.config.cookie_name == "shop_session"
    assert _counts(app, 3) == ["1", "2", "3"]


def test_bad_filter_option_stops_loadapp_naming_it(tmp_path: Path) -> None:
    path = _filtered_app(tmp_path, "timeout = soon")

    with pytest.raises(ConfigError, match="'timeout'"):
        _loadapp(path)


def test_app_factory_reading_its_own_session_keys(
    tmp_path: Path, closing: list[SessionMiddleware]
) -> None:
    """One file for PasteDeploy and for ``from_ini``: ``[app:main]`` holds both the app's
    settings and the ``session.`` options, as Pyramid and Pylons files do."""
    path = _write(tmp_path / "production.ini", PASTE_APP_MAIN.format(key=KEY))

    app = _loadapp(path)
    closing.append(app)

    assert isinstance(app, SessionMiddleware)
    assert app.config.store == f"file:{tmp_path}/sessions"
    assert _counts(app) == ["1", "2"]

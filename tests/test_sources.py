"""Configuration people already have: environment variables, PasteDeploy files and filters.

The environment spelling is checked against the ini spelling option by option, over
the same table of values that ``test_config`` builds every option from, so the two
cannot drift apart. PasteDeploy is driven through a real ``paste.deploy.loadapp``.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import re
import textwrap
from collections.abc import Iterable, Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from werkzeug.test import Client

from tests.helpers import TEST_VARIABLES
from tests.test_config import VALID, _resolve, helper
from wsgisession import ConfigError, SessionMiddleware, get_session
from wsgisession.config import OPTIONS, Config

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


def test_variables_outside_the_prefix_are_not_read() -> None:
    config = Config.from_env(
        environ={"WSGISESSION_SECRET_KEY": KEY, "TIMEOUT": "5", "SESSION_TIMEOUT": "5"}
    )

    assert config == Config.from_options(secret_key=KEY)


# (a variable under the prefix that names no option, what the error must say about it)
UNKNOWN_VARIABLES = [
    pytest.param(
        "WSGISESSION_TIMOUT",
        "unknown environment variable WSGISESSION_TIMOUT; did you mean WSGISESSION_TIMEOUT?",
        id="misspelt",
    ),
    pytest.param(
        "WSGISESSION_COOKIE_SECUR",
        "did you mean WSGISESSION_COOKIE_SECURE?",
        id="misspelt-cookie",
    ),
    pytest.param(
        "WSGISESSION_timeout",
        "WSGISESSION_timeout is not read: names are in capitals; "
        "did you mean WSGISESSION_TIMEOUT?",
        id="lower-case",
    ),
    pytest.param(
        "WSGISESSION_store_table_name",
        "did you mean WSGISESSION_STORE_TABLE_NAME?",
        id="lower-case-store-option",
    ),
    pytest.param(
        "WSGISESSION_STORE_", "WSGISESSION_STORE_ names no store option", id="store-no-name"
    ),
    pytest.param(
        "WSGISESSION_REQUIRE_SERVICES",
        "unknown environment variable WSGISESSION_REQUIRE_SERVICES: it names no option",
        id="not-an-option",
    ),
]


@pytest.mark.parametrize(("variable", "said"), UNKNOWN_VARIABLES)
def test_unknown_variable_under_the_prefix_is_refused_naming_it(variable: str, said: str) -> None:
    """``WSGISESSION_TIMOUT=1800`` used to run with the default 3600, silently."""
    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ={"WSGISESSION_SECRET_KEY": KEY, variable: "1800"})

    assert said in str(caught.value)
    assert "ignore" in str(caught.value)  # and the way out, for a variable that is no option


def test_unknown_variable_under_another_prefix_is_refused_in_its_spelling() -> None:
    with pytest.raises(ConfigError, match="did you mean SHOP_SESSION_TIMEOUT"):
        Config.from_env(
            "SHOP_SESSION_", {"SHOP_SESSION_SECRET_KEY": KEY, "SHOP_SESSION_TIMOUT": "1"}
        )


def test_an_empty_prefix_is_refused() -> None:
    """Every variable of the process would be under it, and each an unknown option."""
    with pytest.raises(ConfigError, match="prefix must be a non-empty string"):
        Config.from_env("", {"SECRET_KEY": KEY, "PATH": "/usr/bin"})


def test_ignore_leaves_variables_that_are_no_options_alone() -> None:
    """Names and shell-style patterns; an ignored variable is not read even when its
    value would be bad."""
    config = Config.from_env(
        environ={
            "WSGISESSION_SECRET_KEY": KEY,
            "WSGISESSION_REQUIRE_SERVICES": "1",
            "WSGISESSION_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
            "WSGISESSION_TEST_POSTGRESQL_URL": "postgresql://",
            "WSGISESSION_DEBUG": "{not json",
        },
        ignore=["WSGISESSION_REQUIRE_SERVICES", "WSGISESSION_TEST_*", "WSGISESSION_DEBUG"],
    )

    assert config == Config.from_options(secret_key=KEY)


def test_ignore_matches_whole_names_in_their_case() -> None:
    environ = {"WSGISESSION_SECRET_KEY": KEY, "WSGISESSION_TEST_URL_2": "x"}

    with pytest.raises(ConfigError, match="WSGISESSION_TEST_URL_2"):
        Config.from_env(environ=environ, ignore=["WSGISESSION_TEST_URL", "wsgisession_test_*"])


@pytest.mark.parametrize(
    "ignore",
    [
        pytest.param("WSGISESSION_DEBUG", id="one-string"),
        pytest.param(["WSGISESSION_DEBUG", ""], id="empty-name"),
        pytest.param([5], id="not-a-string"),
    ],
)
def test_ignore_must_be_a_list_of_names(ignore: Any) -> None:
    """A lone string would be read letter by letter, each letter a pattern."""
    with pytest.raises(ConfigError, match="ignore"):
        Config.from_env(environ={"WSGISESSION_SECRET_KEY": KEY}, ignore=ignore)


def test_the_repositorys_own_variables_are_options_or_in_test_variables() -> None:
    """Every ``WSGISESSION_`` name the test suite, CI and the benchmarks mention is an
    option, a store option, or matched by ``TEST_VARIABLES``, which the tests pass as
    ``ignore`` wherever they read the real environment; so running the suite with its
    own variables set never trips the check. (The files that test the check spell
    names wrong on purpose, and are left out.)"""
    root = Path(__file__).resolve().parent.parent
    files = [root / ".ci" / "run", root / "CONTRIBUTING.md"]
    files += [p for p in (root / "benchmarks").rglob("*") if p.suffix in (".py", ".md")]
    files += [
        path
        for path in (root / "tests").rglob("*.py")
        if path.name not in ("test_sources.py", "test_cli.py", "test_config.py")
    ]
    names = set()
    for path in files:
        names |= set(re.findall(r"\bWSGISESSION_[A-Z0-9_]*", path.read_text(encoding="utf-8")))
    assert "WSGISESSION_REQUIRE_SERVICES" in names  # the search finds what it looks for
    options = {option.name.upper() for option in OPTIONS}

    for name in sorted(names):
        rest = name.removeprefix("WSGISESSION_")
        if rest in ("", "STORE_") or any(fnmatchcase(name, p) for p in TEST_VARIABLES):
            continue
        assert rest in options or rest.startswith("STORE_"), name


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

    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ=environ)

    assert str(caught.value).startswith(f"environment variable {variable}: ")


def test_missing_secret_key_names_the_variable_to_set() -> None:
    with pytest.raises(ConfigError, match="WSGISESSION_SECRET_KEY is not set"):
        Config.from_env(environ={"WSGISESSION_TIMEOUT": "60"})


def test_a_bad_url_parameter_is_blamed_on_the_url_not_an_option_of_its_name() -> None:
    environ = {
        "WSGISESSION_SECRET_KEY": KEY,
        "WSGISESSION_STORE": "redis://127.0.0.1/0?password=x",
        "WSGISESSION_STORE_PASSWORD": "y",
    }
    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ=environ).open_store()
    message = str(caught.value)
    assert message.startswith("environment variable WSGISESSION_STORE: ")
    assert "unknown URL parameter 'password'" in message


@pytest.mark.parametrize(
    ("variables", "start"),
    [
        pytest.param(
            {"WSGISESSION_COOKIE_SECURE": "false", "WSGISESSION_COOKIE_SAMESITE": "None"},
            "environment variables WSGISESSION_COOKIE_SECURE, WSGISESSION_COOKIE_SAMESITE: "
            "option 'cookie_samesite'",
            id="samesite-none-without-secure",
        ),
        pytest.param(
            {"WSGISESSION_TIMEOUT": "100", "WSGISESSION_ANONYMOUS_TIMEOUT": "200"},
            "environment variables WSGISESSION_ANONYMOUS_TIMEOUT, WSGISESSION_TIMEOUT: "
            "option 'anonymous_timeout' (200) must not exceed 'timeout' (100)",
            id="anonymous-timeout-over-timeout",
        ),
    ],
)
def test_contradicting_variables_are_refused_naming_both(
    variables: dict[str, str], start: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ={"WSGISESSION_SECRET_KEY": KEY, **variables})

    assert str(caught.value).startswith(start)


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
    """The process environment holds the test suite's own variables too (CI sets
    ``WSGISESSION_REQUIRE_SERVICES``): ``ignore`` lets them be."""
    monkeypatch.setenv("WSGISESSION_REQUIRE_SERVICES", "1")
    monkeypatch.setenv("WSGISESSION_SECRET_KEY", KEY)
    monkeypatch.setenv("WSGISESSION_STORE", f"file:{tmp_path / 'sessions'}")
    monkeypatch.setenv("WSGISESSION_STORE_SHARD_DEPTH", "1")
    monkeypatch.setenv("WSGISESSION_CLEANUP_INTERVAL", "0")
    monkeypatch.setenv("WSGISESSION_COOKIE_NAME", "sid")

    with pytest.raises(ConfigError, match="WSGISESSION_REQUIRE_SERVICES"):
        SessionMiddleware.from_env(counter)
    app = SessionMiddleware.from_env(counter, ignore=TEST_VARIABLES)
    closing.append(app)

    assert app.config.store_options == {"shard_depth": 1}
    client = Client(app)
    assert [client.get("/").get_data(as_text=True) for _ in range(2)] == ["1", "2"]
    assert client.get_cookie("sid") is not None


# (variables beside the secret, the variables the error must name)
STORE_REFUSALS = [
    pytest.param(
        {"WSGISESSION_STORE": "memory://", "WSGISESSION_STORE_COLOUR": "red"},
        "environment variable WSGISESSION_STORE_COLOUR: ",
        id="unknown-store-option",
    ),
    pytest.param(
        {
            "WSGISESSION_STORE": "sqlite:///sessions.db",
            "WSGISESSION_STORE_TABLE_NAME": "web_sessions",
            "WSGISESSION_STORE_POOL_SIZE": "-3",
        },
        "environment variable WSGISESSION_STORE_POOL_SIZE: store option 'pool_size'",
        id="bad-store-option",
    ),
    pytest.param(
        {
            "WSGISESSION_STORE": "sqlite:///sessions.db",
            "WSGISESSION_STORE_OPTIONS": '{"table_name": "s", "colour": "red"}',
        },
        "environment variable WSGISESSION_STORE_OPTIONS: ",
        id="option-in-the-json",
    ),
    pytest.param(
        {"WSGISESSION_STORE": "mongo://db/sessions", "WSGISESSION_STORE_TABLE_NAME": "s"},
        "environment variable WSGISESSION_STORE: unknown store scheme 'mongo'",
        id="unknown-scheme",
    ),
]


@pytest.mark.parametrize(("variables", "named"), STORE_REFUSALS)
def test_store_refusal_names_the_variable_that_set_it(
    variables: dict[str, str], named: str
) -> None:
    """The store checks its options when the middleware is built; the error still says
    which variable to fix, not only the option's name."""
    environ = {"WSGISESSION_SECRET_KEY": KEY, **variables}

    with pytest.raises(ConfigError) as caught:
        SessionMiddleware.from_env(counter, environ=environ)

    assert str(caught.value).startswith(named)


def test_bad_store_options_json_names_the_variable_and_no_ini_file() -> None:
    environ = {"WSGISESSION_SECRET_KEY": KEY, "WSGISESSION_STORE_OPTIONS": '{"password": x'}

    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ=environ)

    message = str(caught.value)
    assert message.startswith("environment variable WSGISESSION_STORE_OPTIONS: ")
    assert "must be a JSON object" in message
    assert "ini" not in message


def test_weak_key_warning_names_the_variable() -> None:
    with pytest.warns(UserWarning, match="^environment variable WSGISESSION_SECRET_KEY: "):
        Config.from_env(environ={"WSGISESSION_SECRET_KEY": "short"})


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


def test_unknown_session_key_in_app_main_is_refused_in_its_spelling(tmp_path: Path) -> None:
    """Beaker's ``session.type`` left behind in a migrated file is an error, not ignored."""
    path = _write(
        tmp_path / "app.ini",
        f"""
        [app:main]
        session.secret_key = {KEY}
        session.type = file
        """,
    )

    with pytest.raises(ConfigError) as caught:
        Config.from_ini(path)

    assert str(caught.value).startswith(
        f"unknown option 'session.type' in [app:main] of {path}; no option has a name"
    )


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


@pytest.mark.parametrize(
    ("line", "said"),
    [
        pytest.param("timeout = soon", "option 'timeout' must be", id="bad-value"),
        pytest.param("timout = 5", "did you mean 'timeout'?", id="unknown-option"),
    ],
)
def test_bad_filter_option_stops_loadapp_naming_it_and_the_file(
    line: str, said: str, tmp_path: Path
) -> None:
    path = _filtered_app(tmp_path, line)

    with pytest.raises(ConfigError) as caught:
        _loadapp(path)

    assert f"the egg:wsgisession filter of {path}" in str(caught.value)
    assert said in str(caught.value)


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

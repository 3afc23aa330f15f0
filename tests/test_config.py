"""Options: the three spellings (keywords, a mapping, an ini file), their checks and parsing.

Every option is built once through each spelling and the results compared, so the
spellings cannot drift apart. Every check is then hit with a wrong value, and the
message must name the option, because that is what an operator reads at startup.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from wsgisession import ConfigError, SessionMiddleware
from wsgisession.config import OPTIONS, Config, options_markdown
from wsgisession.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Iterable
    from wsgiref.types import StartResponse, WSGIEnvironment

KEY = "a-long-random-test-secret-for-the-test-suite"
OLD_1, OLD_2, OLD_3 = (f"an-older-key-number-{n}-still-accepted" for n in (1, 2, 3))

_HELPER = '''
import json


class Serializer:
    """A serializer object of the user's own: JSON text as bytes."""

    def dumps(self, data):
        return json.dumps(data).encode()

    def loads(self, blob):
        return json.loads(blob)


class SerializerClass(Serializer):
    """The class itself, which is not a serializer: an instance is."""


SERIALIZER = Serializer()
DEFAULTS = {"cart": []}


def fresh():
    return {"cart": []}


def on_event(event):
    pass


def on_error(event):
    pass
'''


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A module on ``sys.path`` with the objects an ini file can name."""
    name = f"wsgisession_test_helper_{uuid.uuid4().hex}"
    directory = tmp_path / "helper"
    directory.mkdir()
    (directory / f"{name}.py").write_text(_HELPER, encoding="utf-8")
    monkeypatch.syspath_prepend(str(directory))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


def _write_ini(tmp_path: Path, lines: Iterable[str], section: str = "session") -> Path:
    path = tmp_path / "app.ini"
    path.write_text("\n".join([f"[{section}]", *lines]) + "\n", encoding="utf-8")
    return path


@dataclasses.dataclass(frozen=True)
class _Attr:
    """A value that is an attribute of the helper module, named in ini as module:name."""

    name: str


def _resolve(value: Any, helper: ModuleType) -> Any:
    if isinstance(value, tuple):
        return tuple(_resolve(item, helper) for item in value)
    return getattr(helper, value.name) if isinstance(value, _Attr) else value


# (option, the value as keyword or mapping, the ini lines that spell it). "{module}"
# in the ini lines is replaced by the helper module's name.
VALID = [
    pytest.param(
        "secret_key",
        "another secret that is long enough",
        ["secret_key = another secret that is long enough"],
        id="secret_key",
    ),
    pytest.param(
        "secret_key_fallbacks",
        (OLD_1, OLD_2),
        ["secret_key_fallbacks =", f"    {OLD_1}", f"    {OLD_2}"],
        id="secret_key_fallbacks",
    ),
    pytest.param("store", "memory://", ["store = memory://"], id="store"),
    pytest.param(
        "store_options",
        {"shard_depth": 1, "fsync": True},
        ["store.shard_depth = 1", "store.fsync = true"],
        id="store_options-keys",
    ),
    pytest.param(
        "store_options",
        {"shard_depth": 1},
        ['store_options = {"shard_depth": 1}'],
        id="store_options-json",
    ),
    pytest.param("timeout", 600, ["timeout = 600"], id="timeout"),
    pytest.param("remember_me_timeout", 86400, ["remember_me_timeout = 86400"], id="remember"),
    pytest.param("absolute_timeout", 7200, ["absolute_timeout = 7200"], id="absolute_timeout"),
    pytest.param("save_every_request", True, ["save_every_request = true"], id="save_every"),
    pytest.param("cookie_name", "__Host-sid", ["cookie_name = __Host-sid"], id="cookie_name"),
    pytest.param("cookie_domain", "example.org", ["cookie_domain = example.org"], id="domain"),
    pytest.param("cookie_path", "/app", ["cookie_path = /app"], id="cookie_path"),
    pytest.param("cookie_secure", True, ["cookie_secure = yes"], id="cookie_secure"),
    pytest.param("cookie_httponly", False, ["cookie_httponly = no"], id="cookie_httponly"),
    pytest.param("cookie_samesite", "Strict", ["cookie_samesite = Strict"], id="samesite"),
    pytest.param("cookie_samesite", None, ["cookie_samesite ="], id="samesite-absent"),
    pytest.param("cookie_partitioned", True, ["cookie_partitioned = on"], id="partitioned"),
    pytest.param("cookie_max_age", 1800, ["cookie_max_age = 1800"], id="cookie_max_age"),
    pytest.param("serializer", "pickle", ["serializer = pickle"], id="serializer-pickle"),
    pytest.param(
        "serializer",
        _Attr("SERIALIZER"),
        ["serializer = {module}:SERIALIZER"],
        id="serializer-object",
    ),
    pytest.param("environ_key", "my.session", ["environ_key = my.session"], id="environ_key"),
    pytest.param(
        "initializer", _Attr("DEFAULTS"), ["initializer = {module}:DEFAULTS"], id="init-mapping"
    ),
    pytest.param(
        "initializer", _Attr("fresh"), ["initializer = {module}:fresh"], id="init-callable"
    ),
    pytest.param("bind_ip", True, ["bind_ip = 1"], id="bind_ip"),
    pytest.param("encrypt", "migrate", ["encrypt = Migrate"], id="encrypt-migrate"),
    pytest.param("anonymous_timeout", 300, ["anonymous_timeout = 300"], id="anonymous_timeout"),
    pytest.param(
        "on_save_error",
        _Attr("on_error"),
        ["on_save_error = {module}:on_error"],
        id="on_save_error",
    ),
    pytest.param("encrypt", False, ["encrypt = off"], id="encrypt-off"),
    pytest.param("max_size", 4096, ["max_size = 4096"], id="max_size"),
    pytest.param("cleanup_interval", 0, ["cleanup_interval = 0"], id="cleanup_interval"),
    pytest.param("regenerate_grace", 0, ["regenerate_grace = 0"], id="regenerate_grace"),
    pytest.param("save_timeout", 5, ["save_timeout = 5"], id="save_timeout"),
    pytest.param(
        "max_sessions_per_user", 5, ["max_sessions_per_user = 5"], id="max_sessions_per_user"
    ),
    pytest.param("track_clients", True, ["track_clients = true"], id="track_clients"),
    pytest.param(
        "listeners",
        (_Attr("on_event"), _Attr("on_error")),
        ["listeners = {module}:on_event, {module}:on_error"],
        id="listeners-commas",
    ),
    pytest.param(
        "listeners",
        (_Attr("on_event"), _Attr("on_error")),
        ["listeners =", "    {module}:on_event", "    {module}:on_error"],
        id="listeners-lines",
    ),
]


def test_every_option_has_a_valid_spelling_below() -> None:
    assert {case.values[0] for case in VALID} == {option.name for option in OPTIONS}


@pytest.mark.parametrize(("name", "value", "ini_lines"), VALID)
def test_keywords_mapping_and_ini_give_the_same_config(
    name: str, value: Any, ini_lines: list[str], helper: ModuleType, tmp_path: Path
) -> None:
    value = _resolve(value, helper)
    options = {"secret_key": KEY, name: value}
    lines = [line.replace("{module}", helper.__name__) for line in ini_lines]
    if name != "secret_key":
        lines.insert(0, f"secret_key = {KEY}")

    from_keywords = Config.from_options(**options)
    from_mapping = Config.from_options(options)
    from_ini = Config.from_ini(_write_ini(tmp_path, lines))

    assert getattr(from_keywords, name) == value
    assert from_keywords == from_mapping == from_ini


def _all_options(tmp_path: Path, helper: ModuleType) -> tuple[dict[str, Any], list[str]]:
    """Every option set away from its default, as keywords and as ini lines."""
    store = f"file:{tmp_path / 'sessions'}"
    options = {
        "secret_key": KEY,
        "secret_key_fallbacks": [OLD_1, OLD_2],
        "store": store,
        "store_options": {"shard_depth": 1, "fsync": True},
        "timeout": 600,
        "remember_me_timeout": 86400,
        "absolute_timeout": 7200,
        "save_every_request": True,
        "cookie_name": "sid",
        "cookie_domain": "example.org",
        "cookie_path": "/app",
        "cookie_secure": True,
        "cookie_httponly": False,
        "cookie_samesite": "None",
        "cookie_partitioned": True,
        "cookie_max_age": 1800,
        "serializer": helper.SERIALIZER,
        "environ_key": "my.session",
        "initializer": helper.fresh,
        "bind_ip": True,
        "anonymous_timeout": 120,
        "on_save_error": helper.on_error,
        "encrypt": "migrate",
        "max_size": 4096,
        "regenerate_grace": 10,
        "save_timeout": 5,
        "cleanup_interval": 0,
        "max_sessions_per_user": 3,
        "track_clients": True,
        "listeners": [helper.on_event, helper.on_error],
    }
    lines = [
        f"secret_key = {KEY}",
        "secret_key_fallbacks =",
        f"    {OLD_1}",
        f"    {OLD_2}",
        f"store = {store}",
        "store.shard_depth = 1",
        "store.fsync = true",
        "timeout = 600",
        "remember_me_timeout = 86400",
        "absolute_timeout = 7200",
        "save_every_request = true",
        "cookie_name = sid",
        "cookie_domain = example.org",
        "cookie_path = /app",
        "cookie_secure = true",
        "cookie_httponly = false",
        "cookie_samesite = None",
        "cookie_partitioned = true",
        "cookie_max_age = 1800",
        f"serializer = {helper.__name__}:SERIALIZER",
        "environ_key = my.session",
        f"initializer = {helper.__name__}:fresh",
        "bind_ip = true",
        "anonymous_timeout = 120",
        f"on_save_error = {helper.__name__}:on_error",
        "encrypt = migrate",
        "max_size = 4096",
        "regenerate_grace = 10",
        "save_timeout = 5",
        "cleanup_interval = 0",
        "max_sessions_per_user = 3",
        "track_clients = yes",
        f"listeners = {helper.__name__}:on_event",
        f"    {helper.__name__}:on_error",
    ]
    return options, lines


def test_middleware_spellings_give_the_same_config(helper: ModuleType, tmp_path: Path) -> None:
    options, lines = _all_options(tmp_path, helper)
    assert set(options) == {option.name for option in OPTIONS}
    # Another section comes first, so reading the wrong one would show.
    path = tmp_path / "app.ini"
    path.write_text("[other]\ntimeout = 5\n\n[sess]\n" + "\n".join(lines) + "\n", encoding="utf-8")

    middlewares = [
        SessionMiddleware(_app, **options),
        SessionMiddleware(_app, options),
        SessionMiddleware.from_ini(_app, path, section="sess"),
    ]
    try:
        configs = [middleware.config for middleware in middlewares]
        assert configs[0] == configs[1] == configs[2]
        assert configs[0].secret_key_fallbacks == (OLD_1, OLD_2)
        assert configs[0].timeout == 600
    finally:
        for middleware in middlewares:
            middleware.close()


def test_keywords_override_the_mapping() -> None:
    config = Config.from_options(
        {"secret_key": KEY, "timeout": 10, "cookie_name": "a"}, timeout=20
    )

    assert (config.secret_key, config.timeout, config.cookie_name) == (KEY, 20, "a")


def test_a_keyword_replaces_a_bad_mapping_value_before_it_is_checked() -> None:
    config = Config.from_options({"secret_key": KEY, "timeout": "soon"}, timeout=30)

    assert config.timeout == 30


def test_defaults_apply_to_options_not_given() -> None:
    """The Config dataclass's defaults are the ones the option table documents."""
    config = Config.from_options(secret_key=KEY)

    for option in OPTIONS[1:]:
        assert getattr(config, option.name) == option.default, option.name


def test_config_fields_are_the_option_table() -> None:
    """The dataclass and OPTIONS are two lists of one set of names; they must agree.
    The one field more, ``sources``, records where options were set and is no option."""
    names = [field.name for field in dataclasses.fields(Config)]

    assert names == [option.name for option in OPTIONS] + ["sources"]


def test_options_markdown_lists_every_option() -> None:
    table = options_markdown()
    rows = table.splitlines()[2:]

    assert [row.split("|")[1].strip() for row in rows] == [f"`{o.name}`" for o in OPTIONS]
    assert "required" in rows[0]


# -- what is refused -------------------------------------------------------------------


class _DumpsOnly:
    def dumps(self, data: object) -> bytes:
        return b""


# (option, a wrong value given as a keyword)
BAD_VALUES = [
    pytest.param("secret_key", "", id="secret_key-empty"),
    pytest.param("secret_key", None, id="secret_key-none"),
    pytest.param("secret_key", 12345, id="secret_key-int"),
    pytest.param("secret_key_fallbacks", "old", id="fallbacks-string"),
    pytest.param("secret_key_fallbacks", 5, id="fallbacks-int"),
    pytest.param("secret_key_fallbacks", ["ok", ""], id="fallbacks-empty-item"),
    pytest.param("secret_key_fallbacks", ["ok", 3], id="fallbacks-int-item"),
    pytest.param("store", 5, id="store-int"),
    pytest.param("store", "", id="store-empty"),
    pytest.param("store_options", ["shard_depth"], id="store_options-list"),
    pytest.param("store_options", "shard_depth=1", id="store_options-string"),
    pytest.param("store_options", {1: 2}, id="store_options-int-key"),
    pytest.param("timeout", "3600", id="timeout-string"),
    pytest.param("timeout", True, id="timeout-bool"),
    pytest.param("timeout", 1.5, id="timeout-float"),
    pytest.param("timeout", 0, id="timeout-zero"),
    pytest.param("timeout", -60, id="timeout-negative"),
    pytest.param("timeout", None, id="timeout-none"),
    pytest.param("remember_me_timeout", "30d", id="remember-string"),
    pytest.param("absolute_timeout", 0, id="absolute-zero"),
    pytest.param("save_every_request", "yes", id="save_every-string"),
    pytest.param("save_every_request", 1, id="save_every-int"),
    pytest.param("cookie_name", "my session", id="cookie_name-space"),
    pytest.param("cookie_name", "sid;x", id="cookie_name-semicolon"),
    pytest.param("cookie_name", "", id="cookie_name-empty"),
    pytest.param("cookie_name", 5, id="cookie_name-int"),
    pytest.param("cookie_domain", "", id="domain-empty"),
    pytest.param("cookie_domain", "example.org; Secure", id="domain-semicolon"),
    pytest.param("cookie_domain", "example.org\r\nX-Evil: 1", id="domain-crlf"),
    pytest.param("cookie_path", "app", id="path-relative"),
    pytest.param("cookie_path", "/a;b", id="path-semicolon"),
    pytest.param("cookie_path", "", id="path-empty"),
    pytest.param("cookie_secure", "true", id="secure-string"),
    pytest.param("cookie_httponly", None, id="httponly-none"),
    pytest.param("cookie_samesite", "Sometimes", id="samesite-unknown"),
    pytest.param("cookie_samesite", True, id="samesite-bool"),
    pytest.param("cookie_partitioned", 1, id="partitioned-int"),
    pytest.param("cookie_max_age", 0, id="max_age-zero"),
    pytest.param("cookie_max_age", "60", id="max_age-string"),
    pytest.param("serializer", "yaml", id="serializer-name"),
    pytest.param("serializer", object(), id="serializer-object"),
    pytest.param("serializer", _DumpsOnly(), id="serializer-no-loads"),
    pytest.param("serializer", json.JSONDecoder, id="serializer-class"),
    pytest.param("environ_key", "", id="environ_key-empty"),
    pytest.param("environ_key", 5, id="environ_key-int"),
    pytest.param("initializer", 5, id="initializer-int"),
    pytest.param("initializer", "defaults", id="initializer-string"),
    pytest.param("bind_ip", "no", id="bind_ip-string"),
    pytest.param("encrypt", "yes", id="encrypt-string"),
    pytest.param("anonymous_timeout", 0, id="anonymous_timeout-zero"),
    pytest.param("anonymous_timeout", "5m", id="anonymous_timeout-string"),
    pytest.param("encrypt", None, id="encrypt-none"),
    pytest.param("max_size", 0, id="max_size-zero"),
    pytest.param("max_size", "1MB", id="max_size-string"),
    pytest.param("cleanup_interval", -1, id="interval-negative"),
    pytest.param("cleanup_interval", 1.5, id="interval-float"),
    pytest.param("regenerate_grace", -1, id="grace-negative"),
    pytest.param("save_timeout", 0, id="save_timeout-zero"),
    pytest.param("save_timeout", "30", id="save_timeout-string"),
    pytest.param("max_sessions_per_user", 0, id="max_sessions-zero"),
    pytest.param("max_sessions_per_user", "5", id="max_sessions-string"),
    pytest.param("track_clients", "on", id="track_clients-string"),
    pytest.param("listeners", print, id="listeners-not-a-list"),
    pytest.param("listeners", "pkg.mod:listen", id="listeners-string"),
    pytest.param("listeners", [print, 5], id="listeners-not-callable"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_wrong_value_raises_config_error_naming_the_option(name: str, value: Any) -> None:
    options = {"secret_key": KEY, "store": "memory://", name: value}

    with pytest.raises(ConfigError) as caught:
        SessionMiddleware(_app, **options)

    assert f"'{name}'" in str(caught.value)


def test_an_optional_flag_names_none_among_its_values() -> None:
    with pytest.raises(
        ConfigError, match=r"'cookie_secure' must be True, False or None, got 'true'"
    ):
        SessionMiddleware(_app, secret_key=KEY, store="memory://", cookie_secure="true")


def test_a_missing_secret_key_says_how_to_make_one() -> None:
    with pytest.raises(ConfigError, match=r"is required: a long random string; make one with"):
        SessionMiddleware(_app, store="memory://")


def test_a_wrong_value_that_is_no_scalar_is_named_by_its_type_alone() -> None:
    # A one-item list was "a list too long to show".
    with pytest.raises(ConfigError, match=r"must be a mapping .*got a list$"):
        SessionMiddleware(_app, secret_key=KEY, store="memory://", store_options=[1])


def test_serializer_class_with_dumps_and_loads_is_refused_by_config_too(
    helper: ModuleType,
) -> None:
    """``wsgisession check`` reads only Config, so Config must refuse what the middleware does."""
    with pytest.raises(ConfigError, match="'serializer'"):
        Config.from_options(secret_key=KEY, serializer=helper.SerializerClass)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="absent"),
        pytest.param({"secret_key": ""}, id="empty"),
        pytest.param({"secret_key": b""}, id="empty-bytes"),
    ],
)
def test_missing_or_empty_secret_key_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="'secret_key'"):
        SessionMiddleware(_app, store="memory://", **options)


def test_bytes_secret_key_is_accepted() -> None:
    key = b"\x00key-of-bytes-long-enough-to-be-a-key"
    assert Config.from_options(secret_key=key).secret_key == key


@pytest.mark.parametrize(
    "spelling",
    [pytest.param("keywords", id="keywords"), pytest.param("mapping", id="mapping")],
)
def test_unknown_option_name_is_refused(spelling: str) -> None:
    options = {"secret_key": KEY, "timeuot": 60}

    with pytest.raises(ConfigError, match="'timeuot'") as caught:
        if spelling == "keywords":
            SessionMiddleware(_app, **options)
        else:
            SessionMiddleware(_app, options)

    message = str(caught.value)
    assert message == "unknown option 'timeuot'; did you mean 'timeout'?"


def test_unknown_option_without_a_close_name_says_so_without_listing_all() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_options(secret_key=KEY, frobnicate=1)

    assert str(caught.value).startswith("unknown option 'frobnicate'; no option has a name")
    assert "cookie_partitioned" not in str(caught.value)


def test_an_option_name_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ConfigError, match="option names are strings, got int"):
        SessionMiddleware(_app, {1: 2, "secret_key": KEY})  # type: ignore[dict-item]


def test_options_that_are_not_a_mapping_are_refused() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        SessionMiddleware(_app, [("secret_key", KEY)])  # type: ignore[arg-type]


def test_unknown_store_scheme_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="'mongo'") as caught:
        SessionMiddleware(_app, secret_key=KEY, store="mongo://localhost/sessions")

    message = str(caught.value)
    for scheme in ("file", "memory", "redis", "sqlite", "postgresql"):
        assert scheme in message


def test_unknown_store_option_is_refused_when_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'colour'"):
        SessionMiddleware(
            _app,
            secret_key=KEY,
            store=f"file:{tmp_path / 'sessions'}",
            store_options={"colour": "red"},
        )


# (options that contradict each other, the option the message names)
CONTRADICTIONS = [
    pytest.param(
        {"cookie_name": "__Host-sid", "cookie_secure": False}, "cookie_secure", id="h-secure"
    ),
    pytest.param(
        {"cookie_name": "__Host-sid", "cookie_domain": "example.org"},
        "cookie_domain",
        id="h-domain",
    ),
    pytest.param({"cookie_name": "__Host-sid", "cookie_path": "/app"}, "cookie_path", id="h-path"),
    pytest.param(
        {"cookie_name": "__host-sid", "cookie_domain": "example.org"},
        "cookie_domain",
        id="h-domain-any-case",  # browsers match the prefix case-insensitively
    ),
    pytest.param(
        {"cookie_name": "__Secure-sid", "cookie_secure": False}, "cookie_secure", id="s-secure"
    ),
    pytest.param(
        {"cookie_samesite": "None", "cookie_secure": False}, "cookie_samesite", id="samesite"
    ),
    pytest.param(
        {"cookie_samesite": "none", "cookie_secure": False}, "cookie_samesite", id="samesite-lc"
    ),
    pytest.param(
        {"cookie_partitioned": True, "cookie_secure": False}, "cookie_partitioned", id="chips"
    ),
]


@pytest.mark.parametrize(("options", "named"), CONTRADICTIONS)
def test_contradicting_cookie_options_are_refused(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=f"'{named}'"):
        SessionMiddleware(_app, secret_key=KEY, store="memory://", **options)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"cookie_name": "__Host-sid"}, id="host-prefix-defaults"),
        pytest.param({"cookie_name": "__Host-sid", "cookie_secure": True}, id="host-secure"),
        pytest.param({"cookie_samesite": "None"}, id="samesite-none-auto-secure"),
        pytest.param({"cookie_partitioned": True, "cookie_secure": True}, id="chips-secure"),
    ],
)
def test_secure_cookie_options_that_agree_are_accepted(options: dict[str, Any]) -> None:
    config = Config.from_options(secret_key=KEY, **options)

    assert config.cookie_secure is not False


def test_samesite_is_normalized_to_the_attribute_spelling() -> None:
    assert (
        Config.from_options(secret_key=KEY, cookie_samesite="strict").cookie_samesite == "Strict"
    )


def test_store_options_with_a_store_object_are_refused() -> None:
    with pytest.raises(ConfigError, match="'store_options'"):
        SessionMiddleware(_app, secret_key=KEY, store=MemoryStore(), store_options={"a": 1})


def test_a_store_object_is_used_as_given() -> None:
    store = MemoryStore()
    middleware = SessionMiddleware(_app, secret_key=KEY, store=store, cleanup_interval=0)

    assert middleware.store is store


# -- ini files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("true", True, id="true"),
        pytest.param("True", True, id="True"),
        pytest.param("yes", True, id="yes"),
        pytest.param("on", True, id="on"),
        pytest.param("1", True, id="1"),
        pytest.param("false", False, id="false"),
        pytest.param("FALSE", False, id="FALSE"),
        pytest.param("no", False, id="no"),
        pytest.param("off", False, id="off"),
        pytest.param("0", False, id="0"),
    ],
)
def test_ini_booleans(text: str, expected: bool, tmp_path: Path) -> None:
    path = _write_ini(tmp_path, [f"secret_key = {KEY}", f"save_every_request = {text}"])

    assert Config.from_ini(path).save_every_request is expected


@pytest.mark.parametrize(
    ("line", "name", "expected"),
    [
        pytest.param("absolute_timeout = none", "absolute_timeout", None, id="seconds-none"),
        pytest.param("absolute_timeout = None", "absolute_timeout", None, id="seconds-None"),
        pytest.param("absolute_timeout =", "absolute_timeout", None, id="seconds-empty"),
        pytest.param("cookie_max_age = none", "cookie_max_age", None, id="max_age-none"),
        pytest.param("cookie_secure = none", "cookie_secure", None, id="secure-none"),
        pytest.param("cookie_domain = none", "cookie_domain", None, id="domain-none"),
        pytest.param("cookie_domain =", "cookie_domain", None, id="domain-empty"),
        pytest.param("initializer = none", "initializer", None, id="initializer-none"),
        pytest.param("timeout = 90", "timeout", 90, id="integer"),
        pytest.param("timeout =   90  ", "timeout", 90, id="integer-spaces"),
        pytest.param("cookie_samesite =", "cookie_samesite", None, id="samesite-empty"),
        pytest.param("cookie_samesite = None", "cookie_samesite", "None", id="samesite-None"),
        pytest.param("cookie_samesite = lax", "cookie_samesite", "Lax", id="samesite-lax"),
        pytest.param("serializer = json", "serializer", "json", id="serializer-json"),
    ],
)
def test_ini_values_parse_to_the_option_type(
    line: str, name: str, expected: Any, tmp_path: Path
) -> None:
    path = _write_ini(tmp_path, [f"secret_key = {KEY}", line])

    assert getattr(Config.from_ini(path), name) == expected


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param([f"secret_key_fallbacks = {OLD_1}"], (OLD_1,), id="one"),
        pytest.param(
            [f"secret_key_fallbacks = {OLD_1}, {OLD_2},{OLD_3}"],
            (f"{OLD_1}, {OLD_2},{OLD_3}",),
            id="commas-are-part-of-a-key",
        ),
        pytest.param(
            ["secret_key_fallbacks =", f"  {OLD_1}", f"  {OLD_2}"], (OLD_1, OLD_2), id="lines"
        ),
        pytest.param(
            [f"secret_key_fallbacks = {OLD_1}", f"  {OLD_2}"],
            (OLD_1, OLD_2),
            id="lines-first-inline",
        ),
        pytest.param(["secret_key_fallbacks ="], (), id="empty"),
    ],
)
def test_ini_secret_lists_are_one_per_line(
    lines: list[str], expected: tuple[str, ...], tmp_path: Path
) -> None:
    path = _write_ini(tmp_path, [f"secret_key = {KEY}", *lines])

    assert Config.from_ini(path).secret_key_fallbacks == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("true", True, id="true"),
        pytest.param("False", False, id="false"),
        pytest.param("none", None, id="none"),
        pytest.param("5", 5, id="int"),
        pytest.param("-2", -2, id="negative-int"),
        pytest.param("0.25", 0.25, id="float"),
        pytest.param(
            '{"ssl": {"verify": false}, "n": 2}',
            {"ssl": {"verify": False}, "n": 2},
            id="json-object",
        ),
        pytest.param("[1, 2]", [1, 2], id="json-list"),
        pytest.param("session:", "session:", id="text"),
        pytest.param("nan", "nan", id="nan-is-text"),
        pytest.param("infinity", "infinity", id="infinity-is-text"),
    ],
)
def test_ini_store_keys_become_typed_store_options(
    text: str, expected: Any, tmp_path: Path
) -> None:
    path = _write_ini(tmp_path, [f"secret_key = {KEY}", f"store.value = {text}"])

    assert Config.from_ini(path).store_options == {"value": expected}


def test_ini_store_keys_win_over_a_store_options_json(tmp_path: Path) -> None:
    path = _write_ini(
        tmp_path,
        [
            f"secret_key = {KEY}",
            'store_options = {"a": 1, "b": 2}',
            "store.b = 3",
        ],
    )

    assert Config.from_ini(path).store_options == {"a": 1, "b": 3}


def test_ini_store_file_mode_can_be_written_in_octal(tmp_path: Path) -> None:
    """``store.file_mode = 0o640``, as the configuration page writes it."""
    ini = _write_ini(
        tmp_path,
        [f"secret_key = {KEY}", f"store = file:{tmp_path / 's'}", "store.file_mode = 0o640"],
    )
    middleware = SessionMiddleware.from_ini(lambda e, s: [], ini)
    assert middleware.store.file_mode == 0o640  # type: ignore[attr-defined]


def test_ini_imports_serializer_and_initializer(helper: ModuleType, tmp_path: Path) -> None:
    path = _write_ini(
        tmp_path,
        [
            f"secret_key = {KEY}",
            f"serializer = {helper.__name__}:SERIALIZER",
            f"initializer = {helper.__name__}:fresh",
        ],
    )

    config = Config.from_ini(path)

    assert config.serializer is helper.SERIALIZER
    assert config.initializer is helper.fresh


def test_ini_keeps_percent_signs_in_a_secret(tmp_path: Path) -> None:
    """Interpolation is off: a generated secret may hold ``%`` and ``%(x)s``."""
    path = _write_ini(tmp_path, ["secret_key = 50%off%(name)s%%-and-long-enough-for-a-key"])

    assert Config.from_ini(path).secret_key == "50%off%(name)s%%-and-long-enough-for-a-key"


# The one rule for words in text values (docs/configuration.rst, "Values as text"):
# the words each kind takes, in any case; anything else is refused, listing them.
WORDS = [
    pytest.param("cookie_secure = YES", "cookie_secure", True, id="bool-yes-upper"),
    pytest.param("cookie_secure = Off", "cookie_secure", False, id="bool-off"),
    pytest.param("cookie_secure = NONE", "cookie_secure", None, id="optional-bool-none"),
    pytest.param("cookie_samesite = strict", "cookie_samesite", "Strict", id="samesite-lower"),
    pytest.param("cookie_samesite = LAX", "cookie_samesite", "Lax", id="samesite-upper"),
    pytest.param("cookie_samesite = none", "cookie_samesite", "None", id="samesite-none-word"),
    pytest.param("encrypt = MIGRATE", "encrypt", "migrate", id="encrypt-migrate"),
    pytest.param("encrypt = No", "encrypt", False, id="encrypt-no"),
    pytest.param("serializer = JSON", "serializer", "json", id="serializer-upper"),
    pytest.param("absolute_timeout = None", "absolute_timeout", None, id="seconds-none"),
]


@pytest.mark.parametrize(("line", "name", "expected"), WORDS)
def test_words_in_text_values_are_read_in_any_case(
    line: str, name: str, expected: Any, tmp_path: Path
) -> None:
    path = _write_ini(tmp_path, [f"secret_key = {KEY}", line])

    assert getattr(Config.from_ini(path), name) == expected


@pytest.mark.parametrize(
    ("line", "listed"),
    [
        pytest.param("cookie_secure = y", "true or false (or yes/no, on/off, 1/0)", id="y"),
        pytest.param("cookie_httponly = enabled", "yes/no", id="enabled"),
        pytest.param("cookie_secure = nil", "none, true or false", id="optional"),
        pytest.param("encrypt = sealed", "migrate, true or false", id="encrypt"),
        pytest.param("cookie_samesite = Stricter", "'Strict', 'Lax', 'None'", id="samesite"),
    ],
)
def test_other_words_are_refused_listing_the_accepted_ones(
    line: str, listed: str, tmp_path: Path
) -> None:
    path = _write_ini(tmp_path, [f"secret_key = {KEY}", line])

    with pytest.raises(ConfigError) as caught:
        Config.from_ini(path)

    assert listed in str(caught.value)


# (ini lines after the secret, the name the message must hold)
BAD_INI = [
    pytest.param(["timeout = soon"], "'timeout'", id="int-word"),
    pytest.param(["timeout = 1.5"], "'timeout'", id="int-float"),
    pytest.param(["timeout = none"], "'timeout'", id="int-none"),
    pytest.param(["timeout = 0"], "'timeout'", id="int-zero"),
    pytest.param(["save_every_request = maybe"], "'save_every_request'", id="bool-word"),
    pytest.param(["save_every_request ="], "'save_every_request'", id="bool-empty"),
    pytest.param(["cookie_samesite = sometimes"], "'cookie_samesite'", id="samesite"),
    pytest.param(["store_options = shard_depth=1"], "'store_options'", id="store_options-text"),
    pytest.param(["store_options = [1]"], "'store_options'", id="store_options-list"),
    pytest.param(["store.x = {not json"], "store option 'x'", id="store-key-json"),
    pytest.param(["timeuot = 5"], "'timeuot'", id="unknown-option"),
    pytest.param(["serializer = yaml"], "'serializer'", id="serializer-no-colon"),
    pytest.param(
        ["serializer = no_such_module_xyz:thing"], "'serializer'", id="serializer-module"
    ),
    pytest.param(["initializer = {module}:MISSING"], "'initializer'", id="initializer-attribute"),
    pytest.param(["initializer = {module}:"], "'initializer'", id="initializer-no-name"),
    pytest.param(["initializer = :fresh"], "'initializer'", id="initializer-no-module"),
    pytest.param(["listeners = {module}:on_event, {module}:nope"], "'listeners'", id="listener"),
    pytest.param(["serializer = {module}:SerializerClass"], "'serializer'", id="serializer-class"),
    pytest.param(["secret_key_fallbacks =", "    "], None, id="fallbacks-blank-lines-ok"),
]


@pytest.mark.parametrize(("lines", "named"), BAD_INI)
def test_bad_ini_value_raises_config_error_naming_it(
    lines: list[str], named: str | None, helper: ModuleType, tmp_path: Path
) -> None:
    lines = [f"secret_key = {KEY}", *(line.replace("{module}", helper.__name__) for line in lines)]
    path = _write_ini(tmp_path, lines)

    if named is None:
        Config.from_ini(path)
        return
    with pytest.raises(ConfigError) as caught:
        SessionMiddleware.from_ini(_app, path)

    assert named in str(caught.value)
    assert f"[session] of {path}" in str(caught.value)


def test_unknown_ini_option_names_the_file_and_section_and_the_closest_option(
    tmp_path: Path,
) -> None:
    path = _write_ini(tmp_path, [f"secret_key = {KEY}", "timout = 1800"])

    with pytest.raises(ConfigError) as caught:
        Config.from_ini(path)

    assert str(caught.value) == (
        f"unknown option 'timout' in [session] of {path}; did you mean 'timeout'?"
    )


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        pytest.param(
            ["cookie_secure = false", "cookie_samesite = None"],
            "option 'cookie_samesite' can't be 'None'",
            id="contradiction",
        ),
        pytest.param(
            ["store = memory://", "store.colour = red"], "colour", id="refused-by-the-store"
        ),
        pytest.param(["store = mongo://db"], "unknown store scheme 'mongo'", id="store-url"),
        pytest.param(["store = memory://"], "option 'secret_key' is required", id="no-secret"),
    ],
)
def test_errors_found_after_reading_still_name_the_file_and_section(
    lines: list[str], said: str, tmp_path: Path
) -> None:
    """Contradictions, the store's own checks and a missing key are found once the whole
    section is read; the message still says which file to open."""
    if said != "option 'secret_key' is required":
        lines = [f"secret_key = {KEY}", *lines]
    path = _write_ini(tmp_path, lines, section="sess")

    with pytest.raises(ConfigError) as caught:
        SessionMiddleware.from_ini(_app, path, section="sess")

    assert str(caught.value).startswith(f"[sess] of {path}: ")
    assert said in str(caught.value)


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        pytest.param([], "'secret_key'", id="absent"),
        pytest.param(["secret_key ="], "'secret_key'", id="empty"),
    ],
)
def test_ini_without_a_secret_is_refused(lines: list[str], named: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=named):
        SessionMiddleware.from_ini(_app, _write_ini(tmp_path, ["store = memory://", *lines]))


def test_missing_ini_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.ini"

    with pytest.raises(ConfigError, match="nowhere.ini"):
        SessionMiddleware.from_ini(_app, path)


def test_missing_ini_section_is_a_config_error(tmp_path: Path) -> None:
    path = _write_ini(tmp_path, [f"secret_key = {KEY}"], section="app")

    with pytest.raises(ConfigError, match=r"\[session\]"):
        SessionMiddleware.from_ini(_app, path, section="session")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"secret_key = x\n", id="no-section-header"),
        pytest.param(b"[session]\nsecret_key = a\nsecret_key = b\n", id="duplicate-key"),
        pytest.param(b"\xff\xfe[session]\n", id="not-utf8"),
    ],
)
def test_unreadable_ini_file_is_a_config_error(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "app.ini"
    path.write_bytes(content)

    with pytest.raises(ConfigError, match="app.ini"):
        Config.from_ini(path)


def test_ini_directory_instead_of_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Config.from_ini(tmp_path)


# -- building never contacts the store ----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("file:/proc/nope/sessions", id="file-uncreatable"),
        pytest.param("sqlite:////nonexistent-dir-wsgisession/x.db", id="sqlite-missing-dir"),
        pytest.param("redis://127.0.0.1:1/0", id="redis-closed-port"),
        pytest.param("redis+sentinel://127.0.0.1:1/mymaster/0", id="redis-sentinel"),
        pytest.param("redis+cluster://127.0.0.1:1", id="redis-cluster"),
        pytest.param("postgresql+psycopg://u:p@127.0.0.1:1/db", id="postgresql"),
        pytest.param("mysql+pymysql://u:p@127.0.0.1:1/db", id="mysql"),
    ],
)
def test_building_the_middleware_never_contacts_the_store(url: str) -> None:
    middleware = SessionMiddleware(_app, secret_key=KEY, store=url)
    middleware.close()


def test_building_with_a_file_store_creates_no_directory(tmp_path: Path) -> None:
    directory = tmp_path / "later" / "sessions"

    SessionMiddleware(_app, secret_key=KEY, store=f"file:{directory}").close()

    assert not (tmp_path / "later").exists()


def test_the_ini_section_text_is_read_verbatim(tmp_path: Path) -> None:
    path = _write_ini(
        tmp_path,
        textwrap.dedent(
            f"""\
            # a comment
            secret_key = {KEY}
            ; another comment
            store = memory://
            """
        ).splitlines(),
    )

    assert Config.from_ini(path) == Config.from_options(secret_key=KEY, store="memory://")


def test_ini_default_section_keys_are_not_options(tmp_path: Path) -> None:
    """A PasteDeploy file's [DEFAULT] (debug, email_to) must not leak into [session]."""
    ini = tmp_path / "app.ini"
    ini.write_text(f"[DEFAULT]\ndebug = true\n\n[session]\nsecret_key = {KEY}\ntimeout = 60\n")
    config = Config.from_ini(ini)
    assert (config.secret_key, config.timeout) == (KEY, 60)


# -- what ``wsgisession check`` shows -----------------------------------------------------


def test_resolved_shows_every_option_with_where_it_was_set(
    helper: ModuleType, tmp_path: Path
) -> None:
    path = _write_ini(
        tmp_path,
        [
            f"secret_key = {KEY}",
            f"secret_key_fallbacks = {OLD_1}",
            "store = redis://:hunter2@cache:6379/0",
            "store.password = hunter3",
            "store.key_prefix = shop:",
            "timeout = 1800",
            f"listeners = {helper.__name__}:on_event",
        ],
    )

    rows = {name: (value, source) for name, value, source in Config.from_ini(path).resolved()}

    here = f"[session] of {path}"
    assert rows["secret_key"] == ("'***'", here)
    assert rows["secret_key_fallbacks"] == ("('***',)", here)
    assert rows["store"] == ("'redis://:***@cache:6379/0'", here)
    assert rows["store.password"] == ("'***'", here)
    assert rows["store.key_prefix"] == ("'shop:'", here)
    assert rows["timeout"] == ("1800", here)
    assert rows["listeners"] == (f"({helper.__name__}:on_event)", here)
    assert rows["remember_me_timeout"] == ("2592000", "default")
    assert "store_options" not in rows  # one row per store option instead
    shown = repr(rows)
    for secret in (KEY, OLD_1, "hunter2", "hunter3"):
        assert secret not in shown


def test_resolved_lists_the_options_in_the_tables_order() -> None:
    names = [name for name, _, _ in Config.from_options(secret_key=KEY).resolved()]

    assert names == [option.name for option in OPTIONS]


def test_resolved_tells_python_arguments_from_defaults() -> None:
    config = Config.from_options(
        secret_key=KEY, timeout=3600, cookie_name="sid", store_options={"a": 1}
    )

    rows = {name: source for name, _, source in config.resolved()}

    assert (rows["secret_key"], rows["cookie_name"], rows["store.a"]) == ("argument",) * 3
    assert rows["timeout"] == "default"  # given, but the default's value


def test_where_options_were_set_does_not_make_configs_differ(tmp_path: Path) -> None:
    path = _write_ini(tmp_path, [f"secret_key = {KEY}"])

    assert Config.from_ini(path).sources == {"secret_key": f"[session] of {path}"}
    assert Config.from_ini(path) == Config.from_options(secret_key=KEY)
    assert "sources" not in repr(Config.from_ini(path))

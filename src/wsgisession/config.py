"""The one table of options, and how keyword arguments, mappings and ini files fill it.

Keyword arguments and mappings are strict: a value of the wrong type raises
:exc:`ConfigError`. Ini files hold text, which is parsed to each option's type first.
Everything is checked when the middleware is built, never on a request.
"""

from __future__ import annotations

import configparser
import importlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .errors import ConfigError
from .stores import open_store, wrap_client
from .stores.base import Store

__all__ = ["OPTIONS", "Config", "Option", "options_markdown"]

SameSite = Literal["Strict", "Lax", "None"]

# RFC 6265 token characters, the only ones a cookie name may use.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A host name or address; werkzeug writes Domain unquoted, so ';' or CRLF would
# add attributes or headers.
_DOMAIN: Final = re.compile(r"[0-9A-Za-z._-]+")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its name, default, kind and the line the README shows for it."""

    name: str
    default: Any
    kind: str
    doc: str


OPTIONS: Final[tuple[Option, ...]] = (
    Option("secret_key", None, "secret", "signs cookies"),
    Option(
        "secret_key_fallbacks",
        (),
        "secrets",
        "older keys still accepted when verifying (key rotation)",
    ),
    Option("store", "file:./sessions", "store", "a store URL or a store object"),
    Option(
        "store_options",
        {},
        "mapping",
        "extra keyword arguments for the store; in ini, keys `store.NAME`",
    ),
    Option("timeout", 3600, "seconds", "idle lifetime, seconds"),
    Option(
        "remember_me_timeout",
        2592000,
        "seconds",
        "lifetime of remembered sessions, seconds (30 days)",
    ),
    Option("absolute_timeout", None, "seconds?", "hard cap from creation, seconds"),
    Option(
        "save_every_request",
        False,
        "bool",
        "save (and so extend) on every request that touched the session",
    ),
    Option(
        "cookie_name",
        "session_id",
        "cookie_name",
        "a `__Host-` name forces Secure, `Path=/` and no `Domain`",
    ),
    Option("cookie_domain", None, "domain", "the cookie's `Domain` attribute"),
    Option("cookie_path", "/", "path", "the cookie's `Path` attribute"),
    Option("cookie_secure", None, "bool?", "`None`: Secure when the request came over https"),
    Option("cookie_httponly", True, "bool", "the `HttpOnly` attribute"),
    Option(
        "cookie_samesite",
        "Lax",
        "samesite",
        '`"Strict"`, `"Lax"`, `"None"` or `None` (no attribute)',
    ),
    Option("cookie_partitioned", False, "bool", "adds `Partitioned` (CHIPS); needs Secure"),
    Option(
        "cookie_max_age",
        None,
        "seconds?",
        "`None`: a browser-lifetime cookie for sessions that are not remembered",
    ),
    Option(
        "serializer",
        "json",
        "serializer",
        '`"json"`, `"pickle"` (signed records), or an object with `dumps` and `loads`',
    ),
    Option("environ_key", "session", "str", "where the session is put in the environ"),
    Option(
        "initializer",
        None,
        "initializer",
        "a mapping, or a callable returning one, every new session starts with",
    ),
    Option(
        "bind_ip",
        False,
        "bool",
        "a session presented from another `REMOTE_ADDR` is treated as expired",
    ),
    Option("max_size", 1048576, "size", "largest serialized session saved, in bytes"),
    Option(
        "cleanup_interval",
        3600,
        "interval",
        "seconds between background purges of expired records; `0` disables",
    ),
    Option(
        "max_sessions_per_user",
        None,
        "count?",
        "linking a session to a user who has this many ends their oldest",
    ),
    Option(
        "track_clients",
        False,
        "bool",
        "record `User-Agent` and `REMOTE_ADDR` for `user_sessions()`",
    ),
    Option(
        "listeners",
        (),
        "listeners",
        "callables receiving an event per `created`, `saved`, `expired`, …",
    ),
)

_BY_NAME: Final = {option.name: option for option in OPTIONS}


@dataclass(frozen=True, slots=True)
class Config:
    """The checked options of one middleware. Build it with :meth:`from_options`."""

    secret_key: str | bytes
    secret_key_fallbacks: tuple[str | bytes, ...] = ()
    store: object = "file:./sessions"  # a URL, a Store, or a driver object to wrap
    store_options: Mapping[str, Any] = field(default_factory=dict)
    timeout: int = 3600
    remember_me_timeout: int = 2592000
    absolute_timeout: int | None = None
    save_every_request: bool = False
    cookie_name: str = "session_id"
    cookie_domain: str | None = None
    cookie_path: str = "/"
    cookie_secure: bool | None = None
    cookie_httponly: bool = True
    cookie_samesite: SameSite | None = "Lax"
    cookie_partitioned: bool = False
    cookie_max_age: int | None = None
    serializer: Any = "json"
    environ_key: str = "session"
    initializer: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None
    bind_ip: bool = False
    max_size: int = 1048576
    cleanup_interval: int = 3600
    max_sessions_per_user: int | None = None
    track_clients: bool = False
    listeners: tuple[Callable[[Any], object], ...] = ()

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Config:
        """Check *options* and *kwargs* (which win) and return the config.

        :raises ConfigError: An option is unknown, missing or of the wrong type, or
            two options contradict each other.
        """
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(
                f"options must be a mapping of option names, got {type(options).__name__}"
            )
        merged = {**(options or {}), **kwargs}
        unknown = sorted(name for name in merged if name not in _BY_NAME)
        if unknown:
            raise ConfigError(
                f"unknown option {unknown[0]!r}; known options: {', '.join(_BY_NAME)}"
            )
        values = {
            name: _CHECKS[_BY_NAME[name].kind](name, value) for name, value in merged.items()
        }
        if "secret_key" not in values:
            raise ConfigError("option 'secret_key' is required: a long random string")
        config = cls(**values)
        config._check_consistency()
        return config

    @classmethod
    def from_ini(cls, path: str | os.PathLike[str], section: str = "session") -> Config:
        """Read the options from *section* of the ini file at *path*.

        Values are text parsed to each option's type; ``store.NAME`` keys become
        ``store_options``. Interpolation is off, so ``%`` in a secret is kept.

        A file without that section is read as a PasteDeploy file: the keys of its
        ``[app:main]`` section that start with *section* and a dot
        (``session.secret_key``, ``session.store.table_name``) are the options, their
        values interpolated as PasteDeploy does (``%(here)s`` is the file's directory,
        ``%%`` a literal ``%``).

        :raises ConfigError: The file is unreadable, has neither the section nor such
            keys, or a value does not parse.
        """
        name = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            # [DEFAULT] often holds the app's own keys (PasteDeploy's debug), which are
            # not options: read it as a section of its own rather than merged in.
            parser = configparser.RawConfigParser(default_section="\x00none")
            parser.read_string(text, source=name)
            if parser.has_section(section):
                items = dict(parser.items(section))
            else:
                items = _paste_items(text, name, section)
                if not items:
                    raise ConfigError(
                        f"config file {name!r} has no [{section}] section and no "
                        f"'{section}.' keys in [app:main]"
                    )
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {name!r}: {exc}") from exc
        except configparser.Error as exc:
            raise ConfigError(f"config file {name!r} is malformed: {exc}") from exc
        return cls.from_options(parse_text_options(items))

    @classmethod
    def from_env(
        cls, prefix: str = "WSGISESSION_", environ: Mapping[str, str] | None = None
    ) -> Config:
        """Read the options from environment variables, parsed like ini values.

        ``PREFIX`` + an option's name in capitals sets that option
        (``WSGISESSION_TIMEOUT=1800``). Any other ``PREFIX + "STORE_" + NAME`` sets the
        store option ``name`` in lower case (``WSGISESSION_STORE_TABLE_NAME`` is
        ``store.table_name`` of an ini file). Other variables under the prefix are
        ignored.

        :param prefix: What every variable name starts with.
        :param environ: The variables to read; :data:`os.environ` by default.
        :raises ConfigError: A value does not parse or is out of range (the message
            names the variable), ``PREFIX + "SECRET_KEY"`` is unset, or two options
            contradict each other.
        """
        values = parse_env_options(prefix, os.environ if environ is None else environ)
        if "secret_key" not in values:
            raise ConfigError(
                f"environment variable {prefix}SECRET_KEY is not set: option 'secret_key' "
                "is required, a long random string"
            )
        return cls.from_options(values)

    def _check_consistency(self) -> None:
        if self.cookie_name.startswith("__Host-"):
            if self.cookie_secure is False:
                raise ConfigError(
                    "option 'cookie_secure' can't be False with a '__Host-' cookie_name"
                )
            if self.cookie_domain is not None:
                raise ConfigError("option 'cookie_domain' must be None with a '__Host-' cookie")
            if self.cookie_path != "/":
                raise ConfigError("option 'cookie_path' must be '/' with a '__Host-' cookie")
        if self.cookie_name.startswith("__Secure-") and self.cookie_secure is False:
            raise ConfigError(
                "option 'cookie_secure' can't be False with a '__Secure-' cookie_name"
            )
        if self.cookie_secure is False:
            if self.cookie_samesite == "None":
                raise ConfigError(
                    "option 'cookie_samesite' can't be 'None' with cookie_secure=False: "
                    "browsers drop SameSite=None cookies that are not Secure"
                )
            if self.cookie_partitioned:
                raise ConfigError(
                    "option 'cookie_partitioned' needs Secure; it can't go with "
                    "cookie_secure=False"
                )
        if isinstance(self.store, Store) and self.store_options:
            raise ConfigError(
                "option 'store_options' applies to store URLs; configure the store "
                "object you passed as 'store' directly"
            )

    def open_store(self) -> Store:
        """Return the configured store, opening its URL with ``store_options``.

        Nothing is contacted. :raises ConfigError: The URL or an option is bad.
        """
        if isinstance(self.store, Store):
            return self.store
        if isinstance(self.store, str):
            return open_store(self.store, **self.store_options)
        store = wrap_client(self.store, **self.store_options)
        if store is None:
            raise ConfigError(
                "option 'store' must be a store URL, a Store, a sqlalchemy.Engine or a "
                f"redis client, got {type(self.store).__name__}"
            )
        return store

    @property
    def secure_prefix(self) -> bool:
        """Whether the cookie name demands the Secure attribute whatever the scheme."""
        return self.cookie_name.startswith(("__Host-", "__Secure-"))


def parse_text_options(items: Mapping[str, str]) -> dict[str, Any]:
    """Parse text values (from an ini file) to the types the options take.

    ``store.NAME`` keys are collected into ``store_options``, their values parsed by
    :func:`parse_store_option`.
    """
    values: dict[str, Any] = {}
    store_options: dict[str, Any] = {}
    for raw_name, text in items.items():
        name = raw_name.strip()
        if name.startswith("store."):
            store_options[name[len("store.") :]] = parse_store_option(text)
            continue
        option = _BY_NAME.get(name)
        if option is None:
            raise ConfigError(f"unknown option {name!r}; known options: {', '.join(_BY_NAME)}")
        values[name] = _PARSERS[option.kind](name, text.strip())
    if store_options:
        values["store_options"] = {**values.get("store_options", {}), **store_options}
    return values


def parse_env_options(prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse and check the options set by *environ*'s variables named *prefix* + ….

    See :meth:`Config.from_env` for the naming rule. Each value is parsed as in an
    ini file and checked on its own, so an error names its variable.
    """
    values: dict[str, Any] = {}
    store_options: dict[str, Any] = {}
    for variable in sorted(environ):
        if not variable.startswith(prefix):
            continue
        rest = variable[len(prefix) :]
        option = _BY_NAME.get(rest.lower()) if rest.isupper() else None
        text = environ[variable]
        try:
            if option is not None:
                parsed = _PARSERS[option.kind](option.name, text.strip())
                values[option.name] = _CHECKS[option.kind](option.name, parsed)
            elif rest.startswith("STORE_") and len(rest) > len("STORE_"):
                store_options[rest[len("STORE_") :].lower()] = parse_store_option(text)
        except ConfigError as exc:
            raise ConfigError(f"environment variable {variable}: {exc}") from exc
    if store_options:
        values["store_options"] = {**values.get("store_options", {}), **store_options}
    return values


def _paste_items(text: str, name: str, section: str) -> dict[str, str]:
    """Return the ``section.``-prefixed keys of ``[app:main]``, prefix removed."""
    # PasteDeploy interpolates its files with these two defaults, so a value written
    # for it (``%(here)s/sessions``, ``%%``) must mean the same here.
    here = os.path.dirname(os.path.abspath(name))
    parser = configparser.ConfigParser(defaults={"here": here, "__file__": os.path.abspath(name)})
    parser.read_string(text, source=name)
    if not parser.has_section("app:main"):
        return {}
    prefix = f"{section}."
    return {
        key[len(prefix) :]: parser.get("app:main", key)
        for key in parser.options("app:main")
        if key.startswith(prefix)
    }


def parse_store_option(text: str) -> Any:
    """Parse a ``store.NAME`` value: a bool, ``none``, a number, JSON, or the text."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for number in (int, float):
        try:
            value = number(text)
        except ValueError:
            continue
        # float() also reads "nan" and "infinity", which are words here, not numbers.
        if math.isfinite(value):
            return value
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"store option value {text!r} is not valid JSON: {exc}") from exc
    return text


def options_markdown() -> str:
    """Return the README's option table, generated from :data:`OPTIONS`."""
    lines = ["| name | default | meaning |", "|---|---|---|"]
    for option in OPTIONS:
        default = "required" if option.name == "secret_key" else _markdown_value(option.default)
        lines.append(f"| `{option.name}` | {default} | {option.doc} |")
    return "\n".join(lines) + "\n"


def _markdown_value(value: object) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    return "`[]`" if value == () else f"`{value!r}`"


# -- strict checks of Python values ---------------------------------------------


def _type_error(name: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"option {name!r} must be {expected}, got {value!r}")


def _check_secret(name: str, value: object) -> str | bytes:
    if not isinstance(value, str | bytes):
        raise _type_error(name, "a string", value)
    if not value:
        raise ConfigError(f"option {name!r} must not be empty: use a long random string")
    return value


def _check_secrets(name: str, value: object) -> tuple[str | bytes, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise _type_error(name, "a list of strings", value)
    return tuple(_check_secret(name, item) for item in value)


def _check_int(name: str, value: object, minimum: int, unit: str = "seconds") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, f"a whole number of {unit}", value)
    if value < minimum:
        raise ConfigError(f"option {name!r} must be at least {minimum}, got {value}")
    return value


def _check_seconds(name: str, value: object) -> int:
    return _check_int(name, value, 1)


def _check_optional_seconds(name: str, value: object) -> int | None:
    return None if value is None else _check_int(name, value, 1)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _type_error(name, "True or False", value)
    return value


def _check_optional_bool(name: str, value: object) -> bool | None:
    return None if value is None else _check_bool(name, value)


def _check_str(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _type_error(name, "a non-empty string", value)
    return value


def _check_optional_str(name: str, value: object) -> str | None:
    return None if value is None else _check_str(name, value)


def _check_cookie_name(name: str, value: object) -> str:
    text = _check_str(name, value)
    if not _TOKEN.fullmatch(text):
        raise ConfigError(
            f"option {name!r} must be a cookie token (letters, digits, -_.), got {text!r}"
        )
    return text


def _check_domain(name: str, value: object) -> str | None:
    text = _check_optional_str(name, value)
    if text is not None and not _DOMAIN.fullmatch(text):
        raise ConfigError(
            f"option {name!r} must be a host name such as 'example.org', got {text!r}"
        )
    return text


def _check_path(name: str, value: object) -> str:
    text = _check_str(name, value)
    if not text.startswith("/") or ";" in text:
        raise ConfigError(f"option {name!r} must be a URL path starting with '/', got {text!r}")
    return text


def _check_samesite(name: str, value: object) -> SameSite | None:
    if value is None:
        return None
    allowed: SameSite
    for allowed in ("Strict", "Lax", "None"):
        if isinstance(value, str) and value.lower() == allowed.lower():
            return allowed
    raise _type_error(name, "'Strict', 'Lax', 'None' or None", value)


def _check_store(name: str, value: object) -> object:
    if isinstance(value, Store) or not isinstance(value, str):
        # Store objects, and driver objects that open_store() wraps or refuses.
        return value
    return _check_str(name, value)


def _check_mapping(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _type_error(name, "a mapping of option names to values", value)
    return dict(value)


def _check_serializer(name: str, value: object) -> object:
    if value in ("json", "pickle"):
        return value
    # A class has callable dumps/loads too, but it is its instance that serializes;
    # the middleware refuses a class, so this check (all that `check` runs) must too.
    if (
        not isinstance(value, str | type)
        and callable(getattr(value, "dumps", None))
        and callable(getattr(value, "loads", None))
    ):
        return value
    raise _type_error(name, "'json', 'pickle', or an object with dumps() and loads()", value)


def _check_initializer(name: str, value: object) -> object:
    if value is None or isinstance(value, Mapping) or callable(value):
        return value
    raise _type_error(name, "a mapping or a callable returning one", value)


def _check_size(name: str, value: object) -> int:
    return _check_int(name, value, 1, "bytes")


def _check_interval(name: str, value: object) -> int:
    return _check_int(name, value, 0)


def _check_optional_count(name: str, value: object) -> int | None:
    return None if value is None else _check_int(name, value, 1, "sessions")


def _check_listeners(name: str, value: object) -> tuple[Callable[[Any], object], ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise _type_error(name, "a list of callables", value)
    for item in value:
        if not callable(item):
            raise _type_error(name, "a list of callables", item)
    return tuple(value)


_CHECKS: Final[dict[str, Callable[[str, Any], Any]]] = {
    "secret": _check_secret,
    "secrets": _check_secrets,
    "store": _check_store,
    "mapping": _check_mapping,
    "seconds": _check_seconds,
    "seconds?": _check_optional_seconds,
    "bool": _check_bool,
    "bool?": _check_optional_bool,
    "str": _check_str,
    "str?": _check_optional_str,
    "cookie_name": _check_cookie_name,
    "domain": _check_domain,
    "path": _check_path,
    "samesite": _check_samesite,
    "serializer": _check_serializer,
    "initializer": _check_initializer,
    "size": _check_size,
    "interval": _check_interval,
    "count?": _check_optional_count,
    "listeners": _check_listeners,
}


# -- parsing of text values ---------------------------------------------------------


def _parse_bool(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise _type_error(name, "true or false", text)


def _parse_optional_bool(name: str, text: str) -> bool | None:
    return None if text.lower() in ("", "none") else _parse_bool(name, text)


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _type_error(name, "a whole number", text) from None


def _parse_optional_int(name: str, text: str) -> int | None:
    return None if text.lower() in ("", "none") else _parse_int(name, text)


def _parse_text(name: str, text: str) -> str:
    return text


def _parse_optional_text(name: str, text: str) -> str | None:
    return None if text.lower() in ("", "none") else text


def _parse_list(name: str, text: str) -> list[str]:
    parts = text.splitlines() if "\n" in text else text.split(",")
    return [part.strip() for part in parts if part.strip()]


def _parse_samesite(name: str, text: str) -> str | None:
    # In ini files the empty value means "no attribute"; "None" is the attribute.
    return None if text == "" else text


def _parse_mapping(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"option {name!r} must be a JSON object in ini files: {exc}") from exc


def _parse_serializer(name: str, text: str) -> object:
    return text if text in ("json", "pickle") else import_object(name, text)


def _parse_initializer(name: str, text: str) -> object:
    return None if text.lower() in ("", "none") else import_object(name, text)


def import_object(name: str, target: str) -> object:
    """Import ``package.module:name`` for option *name*, as ini files spell objects."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"option {name!r} must be written 'package.module:name', got {target!r}")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"option {name!r}: cannot import {target!r}: {exc}") from exc
    return obj


def _parse_listeners(name: str, text: str) -> list[object]:
    return [import_object(name, target) for target in _parse_list(name, text)]


_PARSERS: Final[dict[str, Callable[[str, str], Any]]] = {
    "secret": _parse_text,
    "secrets": _parse_list,
    "store": _parse_text,
    "mapping": _parse_mapping,
    "seconds": _parse_int,
    "seconds?": _parse_optional_int,
    "bool": _parse_bool,
    "bool?": _parse_optional_bool,
    "str": _parse_text,
    "str?": _parse_optional_text,
    "cookie_name": _parse_text,
    "domain": _parse_optional_text,
    "path": _parse_text,
    "samesite": _parse_samesite,
    "serializer": _parse_serializer,
    "initializer": _parse_initializer,
    "size": _parse_int,
    "interval": _parse_int,
    "count?": _parse_optional_int,
    "listeners": _parse_listeners,
}

"""The one table of options, and how keyword arguments, mappings and ini files fill it.

Keyword arguments and mappings are strict: a value of the wrong type raises
:exc:`ConfigError`. Ini files hold text, which is parsed to each option's type first.
Everything is checked when the middleware is built, never on a request.
"""

from __future__ import annotations

import configparser
import inspect
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from ._option_kinds import CHECKS, KEY_ADVICE, PARSERS, SameSite, parse_store_option
from .errors import ConfigError
from .stores import open_store, wrap_client
from .stores.base import Store, mask_url

__all__ = ["OPTIONS", "Config", "Option", "options_markdown"]


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
        "anonymous_timeout",
        None,
        "seconds?",
        "idle lifetime of sessions without a `user_id`, at most `timeout`; linking a user "
        "switches to `timeout`. `None`: `timeout` for all",
    ),
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
    Option(
        "encrypt",
        True,
        "encrypt",
        "seal session data in the store under a key only the cookie yields; "
        '`"migrate"` also reads records written unsealed; `False` writes them unsealed',
    ),
    Option("max_size", 1048576, "size", "largest serialized session saved, in bytes"),
    Option(
        "regenerate_grace",
        60,
        "interval",
        "seconds after `regenerate()` during which the old id gets no cookie-deleting "
        "`Set-Cookie`; `0` disables",
    ),
    Option(
        "on_save_error",
        None,
        "handler",
        "a callable `(environ, error)` returning the WSGI app that answers when the save "
        "after the app returned fails with `StoreError`; `None` re-raises",
    ),
    Option(
        "save_timeout",
        30,
        "seconds",
        "seconds a save may wait for concurrent saves of the same session",
    ),
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

#: Keys shorter than this many characters (bytes, for a bytes key) are flagged as weak.
MIN_KEY_LENGTH: Final = 32
# Placeholders that documentation, ours included, shows for a key.
_PLACEHOLDER_KEYS: Final = frozenset(
    {
        "a long random string",
        "change-me",
        "changeme",
        "change_me",
        "replace-me",
        "secret",
        "secret-key",
        "secret_key",
        "your-secret-key",
        "...",
    }
)
# Store option names whose values are never shown (passwords, tokens, credentials).
_SECRET_NAME: Final = re.compile(r"pass|secret|token|credential|auth", re.IGNORECASE)


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
    anonymous_timeout: int | None = None
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
    encrypt: bool | str = True
    max_size: int = 1048576
    regenerate_grace: int = 60
    on_save_error: Callable[[Any, Any], Any] | None = None
    save_timeout: int = 30
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
        values = {name: CHECKS[_BY_NAME[name].kind](name, value) for name, value in merged.items()}
        if "secret_key" not in values:
            raise ConfigError("option 'secret_key' is required: a long random string")
        config = cls(**values)
        config._check_consistency()
        config._warn_weak_keys()
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
            raise ConfigError(f"config file {name!r} is malformed: {_where(exc)}") from None
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

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={self._shown(f.name)}" for f in fields(self))
        return f"Config({shown})"

    def _shown(self, name: str) -> str:
        """Option *name*'s value as a repr may show it: secrets and passwords masked."""
        value = getattr(self, name)
        if name == "secret_key":
            return "'***'"
        if name == "secret_key_fallbacks":
            return repr(("***",) * len(value))
        if name == "store":
            return repr(mask_url(value)) if isinstance(value, str) else f"<{type(value).__name__}>"
        if name == "store_options":
            return repr(_masked_options(value))
        return repr(value)

    def _warn_weak_keys(self) -> None:
        """Warn about a short or placeholder ``secret_key`` or fallback (never quoting it)."""
        keys = [("secret_key", self.secret_key)]
        keys += [("secret_key_fallbacks", key) for key in self.secret_key_fallbacks]
        for name, key in keys:
            text = key.decode("latin-1") if isinstance(key, bytes) else key
            if text.strip().lower() in _PLACEHOLDER_KEYS:
                reason = "is a placeholder from documentation"
            elif len(key) < MIN_KEY_LENGTH:
                reason = f"is shorter than {MIN_KEY_LENGTH} characters"
            elif len(set(text)) < 8:
                reason = "repeats a handful of characters"
            else:
                continue
            warnings.warn(
                f"option {name!r} {reason}, so cookies signed with it can be forged; "
                + KEY_ADVICE,
                UserWarning,
                stacklevel=_outside_package(),
            )

    def _check_consistency(self) -> None:
        if self.cookie_name.lower().startswith("__host-"):
            if self.cookie_secure is False:
                raise ConfigError(
                    "option 'cookie_secure' can't be False with a '__Host-' cookie_name"
                )
            if self.cookie_domain is not None:
                raise ConfigError("option 'cookie_domain' must be None with a '__Host-' cookie")
            if self.cookie_path != "/":
                raise ConfigError("option 'cookie_path' must be '/' with a '__Host-' cookie")
        if self.cookie_name.lower().startswith("__secure-") and self.cookie_secure is False:
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
        if self.anonymous_timeout is not None and self.anonymous_timeout > self.timeout:
            raise ConfigError(
                f"option 'anonymous_timeout' ({self.anonymous_timeout}) must not exceed "
                f"'timeout' ({self.timeout}): it shortens the lives of anonymous sessions"
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
        return self.cookie_name.lower().startswith(("__host-", "__secure-"))


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
            option_name = name[len("store.") :]
            store_options[option_name] = parse_store_option(option_name, text)
            continue
        option = _BY_NAME.get(name)
        if option is None:
            raise ConfigError(f"unknown option {name!r}; known options: {', '.join(_BY_NAME)}")
        values[name] = PARSERS[option.kind](name, text.strip())
    return _with_store_options(values, store_options)


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
                parsed = PARSERS[option.kind](option.name, text.strip())
                values[option.name] = CHECKS[option.kind](option.name, parsed)
            elif rest.startswith("STORE_") and len(rest) > len("STORE_"):
                option_name = rest[len("STORE_") :].lower()
                store_options[option_name] = parse_store_option(option_name, text)
        except ConfigError as exc:
            raise ConfigError(f"environment variable {variable}: {exc}") from exc
    return _with_store_options(values, store_options)


def _with_store_options(values: dict[str, Any], store_options: dict[str, Any]) -> dict[str, Any]:
    """*values* with the ``store.NAME`` settings added to its ``store_options``.

    The ``store.NAME`` spelling wins over the same name in a ``store_options`` JSON object.
    """
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


def _where(exc: configparser.Error) -> str:
    """What *exc* says is wrong and where, without the text of the line (a secret?)."""
    # DuplicateOptionError -> "duplicate option"
    what = re.sub(r"(?<!^)(?=[A-Z])", " ", type(exc).__name__.removesuffix("Error")).lower()
    place = []
    section = getattr(exc, "section", None)
    if isinstance(section, str):
        place.append(f"section [{section}]")
    option = getattr(exc, "option", None)
    if isinstance(option, str):
        place.append(f"key {option!r}")
    errors = getattr(exc, "errors", None)
    lineno = getattr(exc, "lineno", None)
    if errors:
        lineno = errors[0][0]
    if isinstance(lineno, int):
        place.append(f"line {lineno}")
    return f"{what} error" + (f" at {', '.join(place)}" if place else "")


def _masked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """*options* with the values of secret-looking names, at any depth, masked."""
    shown: dict[str, Any] = {}
    for name, value in options.items():
        if _SECRET_NAME.search(name):
            shown[name] = "***"
        elif isinstance(value, Mapping):
            shown[name] = _masked_options(value)
        elif isinstance(value, str):
            shown[name] = mask_url(value)
        else:
            shown[name] = value
    return shown


def _outside_package() -> int:
    """The ``stacklevel`` of the nearest caller outside wsgisession, for a warning."""
    here = inspect.currentframe()
    frame = None if here is None else here.f_back
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("wsgisession"):
        frame = frame.f_back
        level += 1
    return level


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

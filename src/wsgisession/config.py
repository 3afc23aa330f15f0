"""The checked options of one middleware, from keyword arguments, a mapping, an ini
file or the environment.

Keyword arguments and mappings are strict: a value of the wrong type raises
:exc:`ConfigError`. Ini files and environment variables hold text, which is parsed to
each option's type first (:mod:`wsgisession._option_sources`). Everything is checked
when the middleware is built, never on a request, and every error names where the bad
value came from: the option, the file and section, or the variable.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from ._option_kinds import CHECKS, KEY_ADVICE, SameSite
from ._option_sources import (
    DEFAULT_ENV_PREFIX,
    Read,
    joined,
    located,
    read_env,
    read_ini,
    unknown_option,
)
from ._option_table import BY_NAME, OPTIONS, Option, options_markdown
from .errors import ConfigError
from .stores import open_store, wrap_client
from .stores.base import Store, mask_url

__all__ = ["OPTIONS", "Config", "Option", "options_markdown"]

#: Where :meth:`Config.resolved` says an option came from when it was not set.
DEFAULT: Final = "default"
#: ... and when it was set in Python, by a keyword argument or a mapping.
ARGUMENT: Final = "argument"


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
# How ours look, in the docs' examples: a description in parentheses, not a key.
_PLACEHOLDER_SHAPE: Final = re.compile(r"^\(.*\)$|random bytes", re.IGNORECASE)
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
    #: Where each option, or store option ``store.NAME``, was set when it was read from
    #: a file or the environment: ``[session] of app.ini``, ``environment variable
    #: WSGISESSION_TIMEOUT``. Options at their default, or given in Python, are absent.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

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
        for name in merged:
            if not isinstance(name, str):
                raise ConfigError(f"option names are strings, got {type(name).__name__}")
        for name in sorted(merged):
            if name not in BY_NAME:
                raise unknown_option(name)
        return _build(cls, merged, {}, None)

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
            keys, a key names no option, or a value is bad. The message names the
            file and the section.
        """
        return config_from(read_ini(path, section), cls)

    @classmethod
    def from_env(
        cls,
        prefix: str = DEFAULT_ENV_PREFIX,
        environ: Mapping[str, str] | None = None,
        *,
        ignore: Iterable[str] = (),
    ) -> Config:
        """Read the options from environment variables, parsed like ini values.

        ``PREFIX`` + an option's name in capitals sets that option
        (``WSGISESSION_TIMEOUT=1800``). Any other ``PREFIX + "STORE_" + NAME`` sets the
        store option ``name`` in lower case (``WSGISESSION_STORE_TABLE_NAME`` is
        ``store.table_name`` of an ini file). Any other variable under the prefix is
        an error, as an unknown key of an ini file is, unless *ignore* names it.

        :param prefix: What every variable name starts with.
        :param environ: The variables to read; :data:`os.environ` by default.
        :param ignore: Names of variables under the prefix that are not options and
            are left alone, such as ``["WSGISESSION_DEBUG_TOOLBAR"]``; shell-style
            wildcards match several (``"WSGISESSION_TEST_*"``).
        :raises ConfigError: A variable under the prefix names no option, a value does
            not parse or is out of range (the message names the variable),
            ``PREFIX + "SECRET_KEY"`` is unset, or two options contradict each other.
        """
        read = read_env(prefix, os.environ if environ is None else environ, ignore)
        if "secret_key" not in read.values:
            raise ConfigError(
                f"environment variable {prefix}SECRET_KEY is not set: option 'secret_key' "
                "is required, a long random string"
            )
        return config_from(read, cls)

    def resolved(self) -> list[tuple[str, str, str]]:
        """Every option as ``wsgisession check`` shows it: ``(name, value, source)``.

        The value is shown as :func:`repr` shows it, secrets and passwords masked. The
        source is where the option was set (see :attr:`sources`), ``"default"``, or
        ``"argument"`` for a value given in Python. Store options are a row each,
        named ``store.NAME``, in place of the ``store_options`` row.
        """
        rows = []
        for option in OPTIONS:
            if option.name == "store_options" and self.store_options:
                masked = _masked_options(self.store_options)
                for name in self.store_options:
                    key = f"store.{name}"
                    rows.append((key, repr(masked[name]), self.sources.get(key, ARGUMENT)))
                continue
            rows.append((option.name, self._shown(option.name), self._source(option)))
        return rows

    def _source(self, option: Option) -> str:
        if option.name in self.sources:
            return self.sources[option.name]
        return DEFAULT if getattr(self, option.name) == option.default else ARGUMENT

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={self._shown(f.name)}" for f in fields(self) if f.name != "sources"
        )
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
        if name == "listeners":
            return f"({', '.join(_object_name(item) for item in value)})"
        if name in ("serializer", "initializer") and not isinstance(value, str | Mapping):
            return "None" if value is None else _object_name(value)
        return repr(value)

    def _where(self, *names: str) -> str | None:
        """Where options *names* were set, as one phrase; ``None`` if nowhere recorded."""
        return joined(self.sources[name] for name in names if name in self.sources) or None

    def _warn_weak_keys(self) -> None:
        """Warn about a short or placeholder ``secret_key`` or fallback (never quoting it)."""
        keys = [("secret_key", self.secret_key)]
        keys += [("secret_key_fallbacks", key) for key in self.secret_key_fallbacks]
        for name, key in keys:
            text = key.decode("latin-1") if isinstance(key, bytes) else key
            bare = text.strip()
            if bare.lower() in _PLACEHOLDER_KEYS or _PLACEHOLDER_SHAPE.search(bare):
                reason = "is a placeholder from documentation"
            elif len(key) < MIN_KEY_LENGTH:
                reason = f"is shorter than {MIN_KEY_LENGTH} characters"
            elif len(set(text)) < 8:
                reason = "repeats a handful of characters"
            else:
                continue
            where = self._where(name)
            warnings.warn(
                (f"{where}: " if where else "")
                + f"option {name!r} {reason}, so cookies signed with it can be forged; "
                + KEY_ADVICE,
                UserWarning,
                stacklevel=_outside_package(),
            )

    def _check_consistency(self) -> None:
        """Raise :exc:`ConfigError` if two options contradict each other."""
        problem = self._contradiction()
        if problem is not None:
            message, names = problem
            raise located(ConfigError(message), self._where(*names))

    def _contradiction(self) -> tuple[str, tuple[str, ...]] | None:
        """The first contradiction between options, and the options involved."""
        if self.cookie_name.lower().startswith("__host-"):
            if self.cookie_secure is False:
                return (
                    "option 'cookie_secure' can't be False with a '__Host-' cookie_name",
                    ("cookie_name", "cookie_secure"),
                )
            if self.cookie_domain is not None:
                return (
                    "option 'cookie_domain' must be None with a '__Host-' cookie",
                    ("cookie_name", "cookie_domain"),
                )
            if self.cookie_path != "/":
                return (
                    "option 'cookie_path' must be '/' with a '__Host-' cookie",
                    ("cookie_name", "cookie_path"),
                )
        if self.cookie_name.lower().startswith("__secure-") and self.cookie_secure is False:
            return (
                "option 'cookie_secure' can't be False with a '__Secure-' cookie_name",
                ("cookie_name", "cookie_secure"),
            )
        if self.cookie_secure is False:
            if self.cookie_samesite == "None":
                return (
                    "option 'cookie_samesite' can't be 'None' with cookie_secure=False: "
                    "browsers drop SameSite=None cookies that are not Secure",
                    ("cookie_secure", "cookie_samesite"),
                )
            if self.cookie_partitioned:
                return (
                    "option 'cookie_partitioned' needs Secure; it can't go with "
                    "cookie_secure=False",
                    ("cookie_secure", "cookie_partitioned"),
                )
        if self.anonymous_timeout is not None and self.anonymous_timeout > self.timeout:
            return (
                f"option 'anonymous_timeout' ({self.anonymous_timeout}) must not exceed "
                f"'timeout' ({self.timeout}): it shortens the lives of anonymous sessions",
                ("anonymous_timeout", "timeout"),
            )
        if isinstance(self.store, Store) and self.store_options:
            return (
                "option 'store_options' applies to store URLs; configure the store "
                "object you passed as 'store' directly",
                ("store", "store_options"),
            )
        return None

    def open_store(self) -> Store:
        """Return the configured store, opening its URL with ``store_options``.

        Nothing is contacted.

        :raises ConfigError: The URL or an option is bad; for options read from a
            file or the environment, the message names the file or the variables.
        """
        if isinstance(self.store, Store):
            return self.store
        try:
            if isinstance(self.store, str):
                return open_store(self.store, **self.store_options)
            store = wrap_client(self.store, **self.store_options)
        except ConfigError as exc:
            where = self._store_where(str(exc))
            if where is None:
                raise
            raise located(exc, where) from exc
        if store is None:
            raise ConfigError(
                "option 'store' must be a store URL, a Store, a sqlalchemy.Engine or a "
                f"redis client, got {type(self.store).__name__}"
            )
        return store

    def _store_where(self, message: str) -> str | None:
        """Where the settings a store's error *message* is about were made.

        Stores name the options they refuse, quoted or bare, so those named are the
        ones to blame (quoted ones first: a refusal may go on to list the known
        names); an error that names none is about the URL, else about them all.
        """
        names = list(self.store_options)
        if "URL parameter" in message:
            # About the URL, whichever store option shares the parameter's name.
            return self._where("store") or self._where(*[f"store.{n}" for n in names])
        blamed = [name for name in names if repr(name) in message] or [
            name for name in names if re.search(rf"\b{re.escape(name)}\b", message)
        ]
        settings = [f"store.{name}" for name in blamed or names]
        if blamed:
            return self._where(*settings)
        return self._where("store") or self._where(*settings)

    @property
    def secure_prefix(self) -> bool:
        """Whether the cookie name demands the Secure attribute whatever the scheme."""
        return self.cookie_name.lower().startswith(("__host-", "__secure-"))


def config_from(read: Read, cls: type[Config] = Config) -> Config:
    """Check the options *read* from a file or the environment and return the config."""
    return _build(cls, read.values, read.sources, read.where)


def _build(
    cls: type[Config], values: Mapping[str, Any], sources: dict[str, str], where: str | None
) -> Config:
    """Check *values*, set in *sources* (and *where*, as a whole), and make the config."""
    checked = {}
    for name, value in values.items():
        try:
            checked[name] = CHECKS[BY_NAME[name].kind](name, value)
        except ConfigError as exc:
            raise located(exc, sources.get(name)) from exc
    if "secret_key" not in checked:
        raise located(
            ConfigError(f"option 'secret_key' is required: a long random string; {KEY_ADVICE}"),
            where,
        )
    config = cls(**checked, sources=sources)
    config._check_consistency()
    config._warn_weak_keys()
    return config


def _object_name(value: object) -> str:
    """An object named as an ini file would name it, ``package.module:name``, if it can be."""
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}:{qualname}"
    return f"<{type(value).__name__}>"


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

"""The SQL store's engine: built from a URL and options, or checked when given.

An engine :func:`build_engine` makes has what the store needs of it: no ping
before each use, session data kept out of SQLAlchemy's messages, a driver that
opens no transaction by itself where that saves round trips, and on SQLite a file
of mode ``0600`` in WAL mode. What the store must know of it later (the statement
that opens a transaction, SQLite's busy timeout, that the store built it) is kept
in the engine's execution options and read back with :func:`begin_statement`,
:func:`busy_timeout` and :func:`built_by_store`.
"""

from __future__ import annotations

import os
import random
import re
import time
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy import event

from ..errors import ConfigError
from ._extras import install_hint
from .base import mask_url

__all__ = [
    "begin_statement",
    "build_engine",
    "built_by_store",
    "busy_timeout",
    "check_engine",
    "shown_url",
]

# The engine execution option in which build_engine leaves the statement that opens
# a transaction, on an engine whose driver it has told to open none by itself.
_BEGIN_OPTION: Final = "wsgisession_begin"
# Marks an engine build_engine() made, whose isolation the store knows.
_BUILT_OPTION: Final = "wsgisession_built"
# SQLite's busy timeout on an engine build_engine() made, in seconds.
_BUSY_OPTION: Final = "wsgisession_busy_timeout"

# option -> (accepted types, description for messages)
_OPTIONS: Final[dict[str, tuple[tuple[type, ...], str]]] = {
    "table_name": ((str,), "a str"),
    "pool_size": ((int,), "an int"),
    "max_overflow": ((int,), "an int"),
    "pool_recycle": ((int, float), "a number of seconds"),
    "pool_pre_ping": ((bool,), "a bool"),
    "pool_timeout": ((int, float), "a number of seconds"),
    "connect_args": ((dict,), "a dict"),
    "cleanup_batch": ((int,), "an int"),
    "echo": ((bool,), "a bool"),
}

_EXTRAS: Final = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
# The driver each of those extras installs.
_DRIVERS: Final = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}

# The MySQL protocol's CLIENT_FOUND_ROWS flag, the same value in every driver.
_CLIENT_FOUND_ROWS: Final = 2

_SQLITE_TIMEOUT: Final = 5.0

# Entries of connect_args that hold a credential: their values are never shown.
_SECRET_ARG: Final = re.compile(r"pass|secret|token|credential", re.IGNORECASE)

# What a URL's user name or password must percent-encode, as messages say it.
_ENCODE_HINT: Final = "percent-encode any @ : / ? # or % in its user name or password"


def check_engine(engine: object) -> sa.Engine:
    """Return *engine* if the store can use it, else raise :exc:`ConfigError`.

    It must be a synchronous :class:`sqlalchemy.engine.Engine` whose URL SQLAlchemy
    read as written (see :func:`check_host`).
    """
    if not isinstance(engine, sa.Engine):
        raise ConfigError(
            f"SQLStore needs a sqlalchemy.Engine, not {type(engine).__name__};"
            " build one from a URL with SQLStore.from_url"
        )
    if engine.dialect.is_async:
        raise ConfigError(
            f"store {shown_url(engine.url)!r} uses an asyncio driver; a WSGI"
            " application needs a synchronous one"
        )
    check_host(engine.url)
    return engine


def build_engine(url: str, options: dict[str, Any]) -> sa.Engine:
    """Check *options* and build an engine for *url* without connecting.

    *options* keeps only ``table_name`` and ``cleanup_batch``, which are the
    store's rather than the engine's. On SQLite and on PostgreSQL through psycopg,
    the driver is told to open no transaction by itself, so a lone statement runs
    without ``BEGIN`` and ``COMMIT`` around it; :func:`begin_statement` then names
    the statement that opens one.

    A SQLite database file that does not exist yet is created by the engine's
    first connection with mode ``0600``, whatever the umask, so that SQLite's
    ``-wal`` and ``-shm`` files, which take the database file's mode, are the
    owner's alone as well. An existing file keeps the mode it has.

    No message quotes the URL's password or the value of a secret entry of
    ``connect_args``.

    :raises ConfigError: The URL can't be parsed, its driver is missing, or an
        option is unknown or of the wrong type.
    """
    _check_types(options)
    scheme, colon, rest = url.partition(":")
    url = scheme.lower() + colon + rest  # URL schemes are case-insensitive; SQLAlchemy's not
    if url.startswith(("postgres:", "postgres+")):
        # Heroku-style URLs; SQLAlchemy knows only "postgresql".
        url = "postgresql" + url[len("postgres") :]
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        # Neither the URL nor SQLAlchemy's complaint is shown: a password holding
        # "@" is what usually trips the parser, and the complaint quotes a piece
        # of it as the port.
        scheme, sep, _ = url.partition("://")
        shown = f"{scheme}://…" if sep else "…"
        raise ConfigError(
            f"store {shown!r} is not a database URL SQLAlchemy can read; {_ENCODE_HINT}"
        ) from None
    shown = shown_url(parsed)
    check_host(parsed)
    backend = parsed.get_backend_name()
    # No pool_pre_ping by default: SQLStore replaces a dropped connection when an
    # operation finds it, instead of paying a round trip per operation to look.
    kwargs: dict[str, Any] = {"hide_parameters": True, "pool_pre_ping": False}
    for name in ("pool_size", "max_overflow", "pool_recycle", "pool_pre_ping", "pool_timeout"):
        if name in options:
            kwargs[name] = options.pop(name)
    kwargs["echo"] = options.pop("echo", False)
    connect_args: dict[str, Any] = dict(options.pop("connect_args", {}))
    busy: float | None = None
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
            raise ConfigError(
                f"store {shown!r}: an in-memory SQLite database lives in one connection"
                " and can't be shared by threads and worker processes; use a file"
                " such as 'sqlite:///sessions.db', or 'memory://'"
            )
        connect_args.setdefault("timeout", _SQLITE_TIMEOUT)
        busy = _busy_seconds(shown, connect_args["timeout"])
    elif backend in ("mysql", "mariadb") and "client_flag" in connect_args:
        # The dialect sets FOUND_ROWS itself unless connect_args replaces its
        # client_flag; without it, a refresh that changes nothing counts no rows.
        connect_args["client_flag"] = _client_flag(connect_args["client_flag"])
    if connect_args:
        kwargs["connect_args"] = connect_args
    begin: str | None = None
    if backend == "sqlite":
        # BEGIN IMMEDIATE takes the write lock up front, waiting out the busy
        # timeout, so two writers queue instead of one failing halfway through.
        begin = "BEGIN IMMEDIATE"
    elif backend == "postgresql" and parsed.get_driver_name() == "psycopg":
        # Autocommit set once, when a connection is made, instead of switched on and
        # back off around every statement. psycopg's commit() and rollback() still
        # end a transaction that a BEGIN of ours opened; not every driver's would.
        kwargs["isolation_level"] = "AUTOCOMMIT"
        begin = "BEGIN"
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        hint = install_hint(_EXTRAS.get(backend, "sql"))
        driver = _DRIVERS.get(backend)
        if driver is not None and "+" not in parsed.drivername:
            # SQLAlchemy's own default driver is missing (MySQLdb for mysql://), which
            # the extra does not install: name the one it does.
            hint = f"name its driver in the URL, {backend}+{driver}://…, and {hint}"
        raise ConfigError(
            f"store {shown!r}: SQLAlchemy has no such dialect, or its driver is not"
            f" installed ({exc}): {hint}"
        ) from exc
    except (TypeError, sa.exc.ArgumentError) as exc:
        raise ConfigError(f"store {shown!r}: {exc}") from exc
    if backend == "sqlite":
        # A pool event: unlike a "begin" listener on the engine, it leaves every
        # statement free of SQLAlchemy's event dispatch.
        event.listen(engine, "connect", _sqlite_connect)
        # A dialect event, run before the driver opens (and may create) the file: an
        # open() per new connection, which as a rule finds the file there. It costs
        # each statement a look at an empty list of listeners, under a microsecond.
        event.listen(engine, "do_connect", _sqlite_create)
    engine.update_execution_options(**{_BUILT_OPTION: True})
    if busy is not None:
        engine.update_execution_options(**{_BUSY_OPTION: busy})
    if begin is not None:
        engine.update_execution_options(**{_BEGIN_OPTION: begin})
    return engine


def shown_url(url: sa.URL) -> str:
    """*url* as messages and reprs show it, its password and any password parameter masked."""
    return mask_url(url.render_as_string(hide_password=True))


def check_host(url: sa.URL) -> None:
    """Refuse *url* if its password holds an ``@``, which SQLAlchemy does not read.

    SQLAlchemy ends the password at its first ``@`` and takes the rest of it for the
    host, which the driver then quotes in its connection errors. An ``@`` never
    belongs in a host, so one there means a password to percent-encode.

    :raises ConfigError: The host holds an ``@``; the message shows none of it.
    """
    if "@" in (url.host or ""):
        raise ConfigError(
            f"store '{url.drivername}://…' has an '@' in its password,"
            f" which SQLAlchemy cuts short; {_ENCODE_HINT} ('@' is %40)"
        )


def built_by_store(engine: sa.Engine) -> bool:
    """Whether :func:`build_engine` made *engine*, rather than the application."""
    return bool(engine.get_execution_options().get(_BUILT_OPTION))


def begin_statement(engine: sa.Engine) -> str | None:
    """The statement that opens a transaction on *engine*, if its driver opens none.

    That is the case for an engine from :func:`build_engine` on SQLite or on
    PostgreSQL through psycopg: a transaction of several statements must then send
    this first, or each of them commits on its own. ``None`` for any other engine,
    whose driver begins a transaction before the first statement by itself.
    """
    begin: str | None = engine.get_execution_options().get(_BEGIN_OPTION)
    return begin


def busy_timeout(engine: sa.Engine) -> float:
    """SQLite's busy timeout on *engine*, in seconds: how long a write waits for the lock.

    That of :func:`build_engine`'s engines is known; any other engine is taken to have
    the driver's default, which is also the store's.
    """
    busy: float = engine.get_execution_options().get(_BUSY_OPTION, _SQLITE_TIMEOUT)
    return busy


def _busy_seconds(shown: str, value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(
            f"store {shown!r}: store option 'connect_args' entry 'timeout' (SQLite's"
            " busy timeout) must be a number of seconds >= 0"
        )
    return seconds


def _client_flag(value: Any) -> int:
    try:
        flag: int = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            "store option 'connect_args' entry 'client_flag' must be an int,"
            f" not {type(value).__name__}"
        ) from None
    return flag | _CLIENT_FOUND_ROWS


def _check_types(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown store option {', '.join(map(repr, unknown))} for an SQL store;"
            f" known: {', '.join(_OPTIONS)}"
        )
    for name, value in options.items():
        types, described = _OPTIONS[name]
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            raise ConfigError(
                f"store option {name!r} must be {described}, not {type(value).__name__}"
            )
    if "connect_args" in options:
        _check_connect_args(options["connect_args"])
    for name in ("pool_size", "pool_timeout"):
        if options.get(name, 0) < 0:
            raise ConfigError(f"store option {name!r} must not be negative")


def _check_connect_args(connect_args: dict[Any, Any]) -> None:
    if not all(isinstance(name, str) for name in connect_args):
        raise ConfigError("store option 'connect_args' must have str keys")
    for name, value in connect_args.items():
        # A password the configuration file read as a number ("123456", or worse,
        # "0123" as 123) would fail on first use, in some drivers with a TypeError.
        if _SECRET_ARG.search(name) and not isinstance(value, (str, bytes)):
            raise ConfigError(
                f"store option 'connect_args' entry {name!r} must be a str, not"
                f" {type(value).__name__} (quote it in a configuration file)"
            )


def _sqlite_create(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
    # SQLite creates a missing database file with mode 0644 whatever the umask, and
    # its -wal and -shm files with the database file's mode. Created first here,
    # exclusively, the file is the owner's alone before it holds a byte; an existing
    # file (or a link, even a dangling one) is left to SQLite as it is.
    path = _sqlite_file(cargs, cparams)
    if path is None:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return  # there already, or not to be made here: SQLite opens it, or says why
    try:
        os.fchmod(fd, 0o600)  # what the umask took away, SQLite needs back
    finally:
        os.close(fd)


def _sqlite_file(cargs: list[Any], cparams: dict[str, Any]) -> str | None:
    """The file a connection with these arguments may create, or ``None``."""
    name = str(cargs[0]) if cargs else str(cparams.get("database", ""))
    if cparams.get("uri") and name.startswith("file:"):
        parts = urlsplit(name)
        if parse_qs(parts.query).get("mode", ["rwc"])[-1] != "rwc":
            return None  # read-only, read-write of an existing file, or in memory
        name = unquote(parts.path)
    return None if name in ("", ":memory:") else name


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # pysqlite opens deferred transactions on its own, and a deferred transaction that
    # must later take the write lock fails at once with "database is locked". Turning
    # that off lets the store open every transaction itself (see begin_statement).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        _use_wal(cursor)
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    # WAL lets readers and one writer work at once, across processes. Switching a new
    # file to it fails at once, without waiting out the busy timeout, while another
    # connection holds a lock, as when several processes start on a new file
    # together; the mode is kept in the file, so later connections find it set.
    import sqlite3  # here, as a Python built without it can still use other databases

    deadline = time.monotonic() + _SQLITE_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            # Only a lock passes; anything else (a read-only file, a full disk) would
            # fail the same way for the whole busy timeout.
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.001, 0.01))

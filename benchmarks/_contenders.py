"""Building every contender on every store, seeding their sessions, and cleaning up.

Each contender is configured as its documentation suggests, with the same idle
timeout. Where a peer's defaults do more work than wsgisession (Beaker saves the
access time on every read, Flask-Session writes the session and re-sends its cookie on
every request), the defaults are kept: that is what their users run.
"""

from __future__ import annotations

import shutil
import socket
import warnings
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import redis
import sqlalchemy as sa
from _counting import count_redis
from _limits import (
    RawFile,
    RawMemcached,
    RawMemory,
    RawRedis,
    RawSession,
    RawSQL,
    RawStore,
    passthrough,
)
from _scenarios import OTHER_COOKIES, SCENARIOS, TIMEOUT, floor_app, handler
from _timing import WSGIApp, base_environ, call
from pymemcache.client.base import Client as MemcacheClient
from pymemcache.client.base import PooledClient

import wsgisession

SECRET = "bench-secret-key-0123456789abcdef0123456789abcdef"
STORES = ("memory", "file", "sqlite", "postgresql", "redis", "memcached")

#: Contenders of the plain WSGI comparison, and of the one around a Flask app.
WSGI = ("floor", "passthrough", "raw", "wsgisession", "wsgisession-unsealed", "beaker")
FLASK = ("flask", "flask+wsgisession", "flask-session", "flask-cookie")


@dataclass
class Backends:
    """Where each store lives, and the names this run uses there (unique per run)."""

    tmp: Path
    pg_url: str
    redis_url: str
    tag: str
    memcached_url: str = "memcached://127.0.0.1:11211"
    redis_prefixes: list[str] = field(default_factory=list)
    memcached_prefixes: list[str] = field(default_factory=list)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    def sql_url(self, store: str) -> str:
        """The database of *store*, shared by every contender, each in tables of its own.

        For SQLite too: a read costs more the longer the file's write-ahead log has
        grown since its last checkpoint, and one file shares that state between all.
        """
        return f"sqlite:///{self.tmp / 'bench.db'}" if store == "sqlite" else self.pg_url

    def redis_client(self) -> redis.Redis:
        client = redis.Redis.from_url(self.redis_url)
        count_redis(client)
        return client

    @property
    def memcached_server(self) -> tuple[str, int]:
        """The host and port of the memcached server."""
        return memcached_address(self.memcached_url)

    def ws_options(self, store: str, name: str = "ws") -> dict[str, Any]:
        """wsgisession's store options for *store*, in this run's namespace."""
        if store == "memory":
            return {"store": "memory://"}
        if store == "file":
            return {"store": f"file:{self.tmp / name}"}
        if store == "redis":
            prefix = f"{self.tag}:{name}:"
            self.redis_prefixes.append(prefix)
            return {"store": self.redis_url, "store_options": {"key_prefix": prefix}}
        if store == "memcached":
            prefix = f"{self.tag}:{name}:"
            self.memcached_prefixes.append(prefix)
            return {"store": self.memcached_url, "store_options": {"key_prefix": prefix}}
        table = f"{self.tag}_{name}"
        self.on_cleanup(lambda: _drop(self.sql_url(store), table))
        return {"store": self.sql_url(store), "store_options": {"table_name": table}}

    def on_cleanup(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def cleanup(self) -> None:
        """Drop every table, Redis key and directory this run made."""
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception as exc:  # cleanup goes on; the report says what failed
                print(f"cleanup step failed: {exc!r}")
        client = redis.Redis.from_url(self.redis_url)
        for prefix in self.redis_prefixes:
            delete_prefix(client, prefix)
        client.close()
        if self.memcached_prefixes:
            delete_memcached_prefixes(self.memcached_server, self.memcached_prefixes)
        shutil.rmtree(self.tmp, ignore_errors=True)


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key under *prefix*, in batches; return how many."""
    removed = 0
    batch: list[bytes] = []
    for name in client.scan_iter(match=_glob(prefix) + "*", count=5000):
        batch.append(name)
        if len(batch) >= 5000:
            removed += client.unlink(*batch)
            batch = []
    if batch:
        removed += client.unlink(*batch)
    return removed


def memcached_address(url: str) -> tuple[str, int]:
    """The host and port of a one-server ``memcached://host[:port]`` URL."""
    host, _, port = url.removeprefix("memcached://").partition(":")
    return host, int(port or 11211)


def delete_memcached_prefixes(server: tuple[str, int], prefixes: list[str]) -> int:
    """Delete every key under *prefixes* on a memcached *server*; return how many.

    Memcached can't list its keys by prefix: ``lru_crawler metadump all`` dumps every
    live item's key, read here over a socket of its own.
    """
    with socket.create_connection(server, timeout=30) as sock:
        sock.sendall(b"lru_crawler metadump all\r\n")
        dump = b""
        while not dump.endswith(b"END\r\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            dump += chunk
    names = [
        unquote(line.split(" ", 1)[0].removeprefix("key="))
        for line in dump.decode(errors="replace").splitlines()
        if line.startswith("key=")
    ]
    doomed = [n for n in names if n.startswith(tuple(prefixes))]
    client = MemcacheClient(server, default_noreply=False)
    for name in doomed:
        client.delete(name)
    client.close()
    return len(doomed)


def _glob(prefix: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)


def _drop(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
    finally:
        engine.dispose()


@dataclass
class Built:
    """One contender on one store."""

    name: str
    app: WSGIApp
    #: The session cookie's name, or ``None`` for contenders without one.
    cookie: str | None
    #: Seeds a session with the given items; returns the ``name=value`` cookie.
    seed: Callable[[dict[str, Any]], str]
    #: The Redis clients it uses, for counting the commands the server runs.
    redis: list[redis.Redis] = field(default_factory=list)
    #: wsgisession's middleware, for metrics.
    middleware: wsgisession.SessionMiddleware | None = None


def seed_through(app: WSGIApp, cookie: str) -> Callable[[dict[str, Any]], str]:
    """Seed a session by one request through *app* itself; return its cookie."""

    def seed(data: dict[str, Any]) -> str:
        environ = base_environ(
            HTTP_COOKIE=OTHER_COOKIES,
            **{"bench.seed": data, "bench.scenario": "seed", "bench.action": None},
        )
        response = call(app, environ)
        for value in response.header_values("Set-Cookie"):
            if value.lstrip().startswith(cookie + "="):  # Beaker's start with a space
                return value.lstrip().split(";", 1)[0]
        raise RuntimeError(f"seeding set no {cookie!r} cookie: {response.headers}")

    return seed


def _no_seed(data: dict[str, Any]) -> str:
    return ""


def _environ_session(environ: dict[str, Any]) -> MutableMapping[str, Any]:
    session: MutableMapping[str, Any] = environ["session"]
    return session


def _beaker_session(environ: dict[str, Any]) -> MutableMapping[str, Any]:
    session: MutableMapping[str, Any] = environ["beaker.session"]
    return session


def _beaker_save(session: Any) -> None:
    session.save()


# -- the plain WSGI contenders ---------------------------------------------------


def build_wsgi(name: str, store: str, b: Backends) -> Built | None:
    """Build contender *name* of the plain WSGI comparison on *store*; ``None`` for a
    peer with no backend for it (Beaker's memcached backends need another driver)."""
    app = handler(_environ_session)
    if name == "floor":
        return Built(name, floor_app, None, _no_seed)
    if name == "passthrough":
        return Built(name, passthrough(app), None, _no_seed)
    if name == "raw":
        raw = RawSession(app, _raw_store(store, b))
        b.on_cleanup(raw.store.close)
        clients = [raw.store.client] if isinstance(raw.store, RawRedis) else []
        return Built(name, raw, "raw_id", raw.seed, clients)
    if name in ("wsgisession", "wsgisession-unsealed"):
        # The unsealed twin (encrypt=False) prices encryption at rest: the two differ
        # in nothing else, and share one table, directory or key prefix, so that their
        # difference is the seal's, not that of two tables or files measured in turn.
        sealed = name == "wsgisession"
        mw = ws_middleware(app, store, b, "ws", encrypt=sealed)
        return Built(name, mw, "session_id", seed_through(mw, "session_id"), _ws_redis(mw), mw)
    if name == "beaker":
        return None if store == "memcached" else _beaker(store, b)
    raise ValueError(name)


def ws_middleware(
    app: WSGIApp, store: str, b: Backends, name: str = "ws", **options: Any
) -> wsgisession.SessionMiddleware:
    """wsgisession around *app* on *store*, as a user would configure it."""
    mw = wsgisession.SessionMiddleware(
        app,
        secret_key=SECRET,
        timeout=TIMEOUT,
        cleanup_interval=0,  # no background purge thread competing for the CPU
        **b.ws_options(store, name),
        **options,
    )
    b.on_cleanup(mw.close)
    for client in _ws_redis(mw):
        count_redis(client)
    return mw


def _ws_redis(mw: wsgisession.SessionMiddleware) -> list[redis.Redis]:
    client = getattr(mw.store, "client", None)
    return [client] if isinstance(client, redis.Redis) else []


def _raw_store(store: str, b: Backends) -> RawStore:
    if store == "memory":
        return RawMemory()
    if store == "file":
        return RawFile(b.tmp / "raw")
    if store == "redis":
        b.redis_prefixes.append(f"{b.tag}:raw:")
        return RawRedis(b.redis_client(), f"{b.tag}:raw:")
    if store == "memcached":
        b.memcached_prefixes.append(f"{b.tag}:raw:")
        client = PooledClient(b.memcached_server, default_noreply=False)
        return RawMemcached(client, f"{b.tag}:raw:")
    return RawSQL(b.sql_url(store), f"{b.tag}_raw")


def _beaker(store: str, b: Backends) -> Built:
    from beaker.middleware import SessionMiddleware as BeakerMiddleware

    options: dict[str, Any] = {
        "key": "beaker.session.id",
        "secret": SECRET,
        "timeout": TIMEOUT,
        "httponly": True,
        "samesite": "Lax",
    }
    clients: list[redis.Redis] = []
    if store == "memory":
        options["type"] = "memory"
    elif store == "file":
        options.update(type="file", data_dir=str(b.tmp / "beaker"))
    elif store == "redis":
        # Beaker's keys are "beaker_cache:<id>:session", with no prefix option; the
        # client records them so that cleanup deletes exactly this run's keys.
        client = _RecordingRedis.from_url(b.redis_url)
        count_redis(client)
        b.on_cleanup(lambda: _forget(client))
        clients.append(client)
        options.update(type="ext:redis", url=client)
    else:
        table = f"{b.tag}_beaker"
        url = b.sql_url(store)
        b.on_cleanup(lambda: _drop(url, table))
        options.update(type="ext:database", url=url, table_name=table)
    app = BeakerMiddleware(handler(_beaker_session, _beaker_save), **options)
    return Built(
        "beaker", app, "beaker.session.id", seed_through(app, "beaker.session.id"), clients
    )


class _RecordingRedis(redis.Redis):
    """A client that remembers the keys Beaker writes."""

    written: set[bytes | str]

    def setex(self, name: Any, time: Any, value: Any) -> Any:
        self.__dict__.setdefault("written", set()).add(name)
        return super().setex(name, time, value)

    def set(self, name: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        self.__dict__.setdefault("written", set()).add(name)
        return super().set(name, value, *args, **kwargs)


def _forget(client: _RecordingRedis) -> None:
    names = list(client.__dict__.get("written", ()))
    for start in range(0, len(names), 5000):
        client.unlink(*names[start : start + 5000])
    client.close()


# -- around one Flask app -----------------------------------------------------------


def build_flask(name: str, store: str, b: Backends) -> Built:
    """Build contender *name* of the Flask comparison on *store*."""
    import flask

    def flask_session(environ: dict[str, Any]) -> MutableMapping[str, Any]:
        return flask.session

    if name == "flask":
        # The same view, its "session" a plain dict: Flask's cost with no session.
        data = {**SCENARIOS["big"].seed, **SCENARIOS["refresh"].seed}
        return Built(name, _flask_app(lambda environ: data, None), None, _no_seed)
    if name == "flask+wsgisession":
        app = _flask_app(_ws_from_request, None)
        mw = ws_middleware(app.wsgi_app, store, b, name="fws")
        app.wsgi_app = mw  # type: ignore[method-assign]
        return Built(name, app, "session_id", seed_through(app, "session_id"), _ws_redis(mw), mw)
    if name == "flask-cookie":
        app = _flask_app(flask_session, None)
        app.secret_key = SECRET
        app.permanent_session_lifetime = TIMEOUT
        return Built(name, app, "session", seed_through(app, "session"))
    if name == "flask-session":
        app, clients = _flask_session_app(store, b, flask_session)
        return Built(name, app, "session", seed_through(app, "session"), clients)
    raise ValueError(name)


def _ws_from_request(environ: dict[str, Any]) -> MutableMapping[str, Any]:
    return wsgisession.get_session(environ)


def _flask_app(
    get_session: Callable[[dict[str, Any]], MutableMapping[str, Any]],
    save: Callable[[Any], None] | None,
) -> Any:
    import flask

    app = flask.Flask(f"bench_{id(get_session)}")
    session_app = handler(get_session, save)

    def start_response(*args: Any) -> None:
        return None

    @app.get("/")
    def index() -> str:
        # The shared handler, minus its start_response: Flask makes the response.
        session_app(flask.request.environ, start_response)
        return "ok"

    return app


def _flask_session_app(
    store: str, b: Backends, get_session: Callable[[dict[str, Any]], MutableMapping[str, Any]]
) -> tuple[Any, list[redis.Redis]]:
    from flask_session import Session

    app = _flask_app(get_session, None)
    app.secret_key = SECRET
    app.permanent_session_lifetime = TIMEOUT
    clients: list[redis.Redis] = []
    if store == "memory":
        from cachelib import SimpleCache

        app.config.update(SESSION_TYPE="cachelib", SESSION_CACHELIB=SimpleCache(threshold=0))
    elif store == "file":
        from cachelib import FileSystemCache

        # threshold=0: no pruning by file count, like the other file stores here.
        cache = FileSystemCache(str(b.tmp / "flask-session"), threshold=0)
        app.config.update(SESSION_TYPE="cachelib", SESSION_CACHELIB=cache)
    elif store == "redis":
        client = b.redis_client()
        clients.append(client)
        prefix = f"{b.tag}:fs:"
        b.redis_prefixes.append(prefix)
        app.config.update(SESSION_TYPE="redis", SESSION_REDIS=client, SESSION_KEY_PREFIX=prefix)
    elif store == "memcached":
        # As Flask-Session's documentation has it: a pymemcache Client of its own.
        prefix = f"{b.tag}:fs:"
        b.memcached_prefixes.append(prefix)
        memcached = MemcacheClient(b.memcached_server)
        b.on_cleanup(memcached.close)
        app.config.update(
            SESSION_TYPE="memcached", SESSION_MEMCACHED=memcached, SESSION_KEY_PREFIX=prefix
        )
    else:
        from flask_sqlalchemy import SQLAlchemy

        table = f"{b.tag}_fs"
        url = b.sql_url(store)
        app.config.update(SQLALCHEMY_DATABASE_URI=url)
        db = SQLAlchemy(app)
        app.config.update(
            SESSION_TYPE="sqlalchemy", SESSION_SQLALCHEMY=db, SESSION_SQLALCHEMY_TABLE=table
        )
        b.on_cleanup(lambda: _drop(url, table))

        def dispose() -> None:
            with app.app_context():
                db.engine.dispose()

        b.on_cleanup(dispose)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        Session(app)
    return app, clients

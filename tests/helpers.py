"""What the tests share: test servers and stores, a routed WSGI app and its client,
handlers, the movable clock, and child processes.

Fixtures are declared in ``conftest.py`` (and ``stores/conftest.py``), built from what
is here; tests import from this module, never from a conftest.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
import redis
from redis.cluster import RedisCluster
from waitress import wasyncore
from waitress.server import TcpWSGIServer, create_server
from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Request, Response

import wsgisession
from wsgisession import Session, SessionMiddleware
from wsgisession.errors import StoreError
from wsgisession.ids import store_key
from wsgisession.stores import Store, open_store
from wsgisession.stores._file_tree import TEMP_PREFIX
from wsgisession.stores.base import Record, mask_url
from wsgisession.stores.file import FileStore
from wsgisession.stores.memcached import MemcachedStore
from wsgisession.stores.memory import MemoryStore
from wsgisession.stores.redis import RedisStore
from wsgisession.testing import make_record, new_key
from wsgisession.testing._helpers import run_threads

if TYPE_CHECKING:
    from tests.tcp_proxy import SlowReplies
    from wsgisession.stores.sql import SQLStore

# -- test servers and stores ---------------------------------------------------------

#: Marks a test that needs a PostgreSQL, MariaDB, Redis or memcached server.
SERVER = pytest.mark.server

DEFAULT_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mariadb+pymysql://root@127.0.0.1:3306/test",
    "redis": "redis://127.0.0.1:6379/0",
}

#: Every store, as the ``store`` fixture runs them.
STORE_KINDS = [
    "memory",
    "file",
    "sqlite",
    pytest.param("postgresql", marks=SERVER),
    pytest.param("mariadb", marks=SERVER),
    pytest.param("redis", marks=SERVER),
    pytest.param("redis-sentinel", marks=SERVER),
    pytest.param("redis-cluster", marks=SERVER),
    pytest.param("memcached", marks=SERVER),
]

#: The SQL databases, and those of them that are servers.
SQL_KINDS = [
    "sqlite",
    pytest.param("postgresql", marks=SERVER),
    pytest.param("mariadb", marks=SERVER),
]
SQL_SERVER_KINDS = SQL_KINDS[1:]


#: The variables under ``WSGISESSION_`` that the tests, CI and the benchmarks read, which
#: are no options: what tests pass as ``from_env(ignore=...)`` when they read the real
#: environment (docs/configuration.rst, "Environment variables").
TEST_VARIABLES = ("WSGISESSION_REQUIRE_SERVICES", "WSGISESSION_TEST_*")


def services_required() -> bool:
    """Whether an unreachable server must fail the test instead of skipping it."""
    return os.environ.get("WSGISESSION_REQUIRE_SERVICES", "") not in ("", "0")


def server_url(kind: str) -> str:
    """The URL of the shared test server for *kind* (postgresql, mariadb, redis)."""
    return os.environ.get(f"WSGISESSION_TEST_{kind.upper()}_URL", DEFAULT_URLS[kind])


def unreachable(url: str, exc: BaseException) -> NoReturn:
    """Skip (or fail, when services are required) because *url* can't be reached."""
    reason = f"store {mask_url(url)} is not reachable: {exc}"
    if services_required():
        pytest.fail(reason)
    pytest.skip(reason)


def store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URL of a store of *kind* that no other test uses."""
    if kind == "memory":
        return "memory://"
    if kind == "file":
        return f"file:{tmp_path / 'sessions'}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    if kind == "redis-sentinel":
        url: str = request.getfixturevalue("redis_sentinel_url")
        return url
    if kind == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_url")
        return url
    if kind == "memcached":
        # A server of the run's own, whose item limit holds the suite's 1 MiB record.
        url = request.getfixturevalue("memcached_url")
        return url
    return server_url(kind)


def free_ports(count: int) -> list[int]:
    """Return *count* distinct loopback ports that are free right now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def unreachable_store_url(kind: str, tmp_path: Path) -> str:
    """The URL of a store of *kind* whose backend isn't there.

    Servers: a loopback port nobody listens on. The file store and SQLite: a path
    under a regular file, so the directory can't exist. The memory store has no
    backend, so it has no such URL.
    """
    if kind in ("file", "sqlite"):
        in_the_way = tmp_path / "a-file-in-the-way"
        in_the_way.write_text("not a directory")
        return (
            f"file:{in_the_way / 'sessions'}" if kind == "file" else f"sqlite:///{in_the_way}/db"
        )
    [port] = free_ports(1)
    if kind in ("postgresql", "mariadb"):
        import sqlalchemy as sa

        url = sa.make_url(server_url(kind)).set(host="127.0.0.1", port=port)
        return url.render_as_string(hide_password=False)
    urls = {
        "redis": f"redis://127.0.0.1:{port}/0",
        "redis-sentinel": f"redis+sentinel://127.0.0.1:{port}/mymaster/0",
        "redis-cluster": f"redis+cluster://127.0.0.1:{port}",
        "memcached": f"memcached://127.0.0.1:{port}",
    }
    if kind not in urls:
        raise ValueError(f"a {kind} store has no backend to be unreachable")
    return urls[kind]


def store_class(kind: str) -> type[Store]:
    """The class of the stores of *kind*, whose ``from_url`` builds them."""
    if kind in ("sqlite", "postgresql", "mariadb"):
        from wsgisession.stores.sql import SQLStore

        return SQLStore
    if kind.startswith("redis"):
        return RedisStore
    if kind == "memcached":
        from wsgisession.stores.memcached import MemcachedStore

        return MemcachedStore
    return {"memory": MemoryStore, "file": FileStore}[kind]


def reachable_sql_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return :func:`store_url` for SQL database *kind*, once a connection to it works."""
    import sqlalchemy as sa

    url = store_url(kind, request, tmp_path)
    engine = sa.create_engine(url)
    try:
        with engine.connect():
            pass
    except sa.exc.SQLAlchemyError as exc:
        unreachable(url, exc)
    finally:
        engine.dispose()
    return url


def unique_table_name() -> str:
    """A table name no other test uses."""
    return f"test_sessions_{uuid.uuid4().hex[:12]}"


def isolation_options(kind: str) -> dict[str, Any]:
    """Store options that keep one test's records apart from every other test's."""
    if kind in ("postgresql", "mariadb"):
        return {"table_name": unique_table_name()}
    if kind.startswith("redis") or kind == "memcached":
        return {"key_prefix": f"test:{uuid.uuid4().hex[:12]}:"}
    return {}


def open_test_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, **options: Any
) -> Iterator[Store]:
    """Open a fresh store of *kind*, make sure it is reachable, and clean it up after."""
    url = store_url(kind, request, tmp_path)
    store = open_store(url, **{**isolation_options(kind), **options})
    try:
        store.ping()
    except StoreError as exc:
        store.close()
        unreachable(url, exc)
    try:
        yield store
    finally:
        _drop(kind, store)
        store.close()


def _drop(kind: str, store: Store) -> None:
    # Server stores are shared across tests and runs: leave nothing behind.
    if kind in ("postgresql", "mariadb"):
        store.table.drop(store.engine, checkfirst=True)  # type: ignore[attr-defined]
    elif kind.startswith("redis"):
        client = store.client  # type: ignore[attr-defined]
        for key in list(client.scan_iter(match=store.key_prefix + "*")):  # type: ignore[attr-defined]
            client.delete(key)
    elif isinstance(store, MemcachedStore):
        for client, names in memcached_keys(store).items():
            for name in names:
                client.delete(name, noreply=False)


def memcached_keys(store: MemcachedStore) -> dict[Any, list[str]]:
    """Every key under *store*'s prefix, by the client of its server.

    Memcached can't list its keys; ``lru_crawler metadump all`` dumps every live
    item's metadata, key included, which is what a thief with the server would read.
    """
    found: dict[Any, list[str]] = {}
    for client in store._servers.each():
        # Over its own socket: pymemcache's raw_command() keeps only the last 4 KB.
        with socket.create_connection(client.server, timeout=10) as sock:
            sock.sendall(b"lru_crawler metadump all\r\n")
            dump = b""
            while not dump.endswith(b"END\r\n"):
                chunk = sock.recv(65536)
                assert chunk, "memcached closed the connection during a metadump"
                dump += chunk
        names = []
        for line in dump.decode().splitlines():
            field = line.split(" ", 1)[0]
            if field.startswith("key="):
                name = urllib.parse.unquote(field[4:])
                if name.startswith(store.key_prefix):
                    names.append(name)
        found[client] = names
    return found


def live_sessions(store: Store) -> int:
    """How many live sessions, tombstones aside, *store* holds: its :meth:`~Store.count`,
    or, for memcached, which can't count, the sessions under its prefix read one by one."""
    counted = store.count()
    if counted is not None:
        return counted
    assert isinstance(store, MemcachedStore), f"{store!r} can't count its sessions"
    sessions = re.escape(store.key_prefix) + "[0-9a-f]{64}"
    keys = [
        name[len(store.key_prefix) :]
        for names in memcached_keys(store).values()
        for name in names
        if re.fullmatch(sessions, name)
    ]
    now = wsgisession._clock.now()
    records = store._reader.records(keys).values()
    return sum(1 for r in records if r is not None and r.version != 0 and r.expires_at > now)


def raw_dump(store: Store, directory: Path) -> bytes:
    """Every byte *store* keeps, as a thief with a dump of it would see them.

    File and SQLite stores are read as the files under *directory* (the test's
    ``tmp_path``); server stores as every row of the table or every value under the
    key prefix (memcached's found with :func:`memcached_keys`); the memory store as its
    records.
    """
    if isinstance(store, MemoryStore):
        return b"\n".join(
            r.data + r.meta + (r.user_id or "").encode() for r in store._records.values()
        )
    if isinstance(store, RedisStore):
        client, parts = store.client, []
        for key in client.scan_iter(match=store.key_prefix + "*"):
            kind = client.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "string":
                parts.append(client.get(key))
            elif kind == "hash":
                parts.extend(b for pair in client.hgetall(key).items() for b in pair)
            elif kind == "set":
                parts.extend(client.smembers(key))
            elif kind == "zset":
                parts.extend(client.zrange(key, 0, -1))
            elif kind == "list":
                parts.extend(client.lrange(key, 0, -1))
        return b"\n".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)
    if isinstance(store, MemcachedStore):
        values: list[bytes] = []
        for client, names in memcached_keys(store).items():
            values += [name.encode() for name in names]
            values += list(client.get_many(names).values()) if names else []
        return b"\n".join(values)
    engine = getattr(store, "engine", None)
    if engine is not None and engine.dialect.name != "sqlite":
        with engine.connect() as connection:
            rows = connection.execute(store.table.select()).all()  # type: ignore[attr-defined]
        return b"\n".join(
            v if isinstance(v, bytes) else str(v).encode() for row in rows for v in row
        )
    return b"\n".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


# -- SQL tables and locks ---------------------------------------------------------------------

#: Call with any options; returns an SQLStore on a table of the test's own.
OpenSQL = Callable[..., "SQLStore"]


def never_build(current: Record) -> Record:
    """A save_locked() build that must not run."""
    raise AssertionError("built without holding the lock")


@contextlib.contextmanager
def locked_elsewhere(store: SQLStore, key: str) -> Iterator[None]:
    """Hold the lock of the SQL row under *key* from a connection outside the store.

    On SQLite that is the database's write lock, as another process would hold it.
    """
    import sqlalchemy as sa

    if store.engine.dialect.name == "sqlite":
        db = sqlite3.connect(store.engine.url.database or "", isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield
            db.execute("ROLLBACK")
        finally:
            db.close()
        return
    engine = sa.create_engine(store.engine.url)
    table = store.table
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(
                sa.select(table.c.version).where(table.c.id_hash == key).with_for_update()
            ).all()
            yield
    finally:
        engine.dispose()


# -- the file store's files -----------------------------------------------------------


def record_path(store: FileStore, key: str) -> Path:
    """The file a file store keeps the record under *key* in."""
    shards = [key[2 * i : 2 * i + 2] for i in range(store.shard_depth)]
    return Path(store.directory).joinpath(*shards, key)


def record_files(root: Path) -> list[Path]:
    """The record files under *root*, without lock, lease and temp files."""
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


def temp_files(root: Path) -> list[Path]:
    """The temp files under *root* that writes have not renamed (yet)."""
    return list(root.rglob(TEMP_PREFIX + "*"))


# -- Redis keys and scripts -----------------------------------------------------------------


def redis_user_key(store: RedisStore, user_id: str) -> str:
    """The name of *user_id*'s index, as the scripts build it."""
    return store.key_prefix + "u:" + user_id.encode().hex()


def redis_lock_keys(store: RedisStore, key: str) -> tuple[str, str]:
    """The names of *key*'s save lock and of its line, as the scripts build them."""
    lock = f"{store.key_prefix}l:{{{store.key_prefix}{key}}}"
    return lock, lock + ":q"


def fail_script(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch, script: Any, message: str
) -> Callable[[], None]:
    """Make every run of *script* fail as if its node were down; return the undo."""
    run = store._run

    def failing(which: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if which == script:
            with store._errors():
                raise redis.ConnectionError(message)
        return run(which, keys, args)

    monkeypatch.setattr(store, "_run", failing)
    return lambda: monkeypatch.setattr(store, "_run", run)


def other_slot(cluster: RedisStore, key: str) -> str:
    """A new key in another Cluster slot than *key*."""
    client = cluster.client
    assert isinstance(client, RedisCluster)
    slot = client.keyslot(cluster.key_prefix + key)
    return next(k for k in iter(new_key, None) if client.keyslot(cluster.key_prefix + k) != slot)


# -- the clock ---------------------------------------------------------------------------


class FakeClock:
    """The application's clock (wsgisession._clock.now), moved by hand: the middleware and
    every store read it."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._time = time.time

    def __call__(self) -> float:
        return self._time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock *seconds* forward."""
        self.offset += seconds


# -- an application and its client ---------------------------------------------------------

Handler = Callable[[Session, Request], Any]

SECRET = "test-secret-key-that-is-long-enough"


def routed_app(routes: dict[str, Handler]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app calling ``routes[path](session, request)``.

    A handler may return a Response, or anything JSON-encodable, which becomes the
    body of a 200 response.
    """

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        result = routes[request.path](environ["session"], request)
        if not isinstance(result, Response):
            result = Response(json.dumps(result, default=str), mimetype="application/json")
        return result(environ, start_response)

    return app


def make_client(routes: dict[str, Handler], **options: Any) -> tuple[Client, SessionMiddleware]:
    """A werkzeug test client for the routes wrapped in the middleware (and the linter)."""
    options.setdefault("secret_key", SECRET)
    options.setdefault("store", "memory://")
    # No purge threads outliving the test; test_purge covers them.
    options.setdefault("cleanup_interval", 0)
    middleware = SessionMiddleware(routed_app(routes), **options)
    return Client(LintMiddleware(middleware)), middleware


def get_with_cookie_header(
    application: Any, path: str, cookie_header: str, **kwargs: Any
) -> TestResponse:
    """GET *path* sending *cookie_header* verbatim (the client's cookie jar is off)."""
    client = Client(application, use_cookies=False)
    return client.get(path, headers={"Cookie": cookie_header}, **kwargs)


def with_cookie(application: Any, value: str, name: str = "session_id") -> Client:
    """A browser on *application* holding the session cookie *value* (a replay, a tab)."""
    client = Client(application)
    client.set_cookie(name, value)
    return client


def twin(client: Client, name: str = "session_id") -> Client:
    """A second browser on *client*'s application, holding the same session cookie."""
    return with_cookie(client.application, cookie_value(client, name), name)


def wsgi_environ(path: str = "/", cookie: str | None = None) -> dict[str, Any]:
    """The environ of a GET of *path*, with the ``Cookie`` header *cookie* if given."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "wsgi.url_scheme": "http",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
    }
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    return environ


def call_as_server(application: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """Call *application* like a PEP 3333 server that has sent nothing yet; return the
    status and headers it finally chose (the last ``start_response`` call wins)."""
    sent: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        sent[:] = [(status, headers)]
        return lambda data: None

    response = application(environ, start_response)
    try:
        for _ in response:
            pass
    finally:
        getattr(response, "close", lambda: None)()
    return sent[0]


def raising_after_start_response(change: Callable[[Session], object]) -> Any:
    """A WSGI app: ``/login`` stores ``n = 1``; ``/boom`` makes *change* to the session,
    calls start_response, then raises; any other path shows the session's items."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/login":
            session["n"] = 1
        elif environ["PATH_INFO"] == "/boom":
            change(session)
            start_response("200 OK", [("Content-Type", "text/plain")])
            raise RuntimeError("the app fails after start_response")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(sorted(session.items())).encode()]

    return app


class CountingStore(MemoryStore):
    """A real memory store that counts the calls it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def load(self, key: str) -> Record | None:
        self.calls.append("load")
        return super().load(key)

    def save(self, key: str, record: Record, **kwargs: Any) -> bool:
        self.calls.append("save")
        return super().save(key, record, **kwargs)

    def refresh(
        self, key: str, expires_at: float, last_seen: float, *, version: int | None = None
    ) -> bool:
        self.calls.append("refresh")
        return super().refresh(key, expires_at, last_seen, version=version)


# -- handlers ------------------------------------------------------------------------------


def untouched(session: Session, request: Request) -> str:
    """Answer without touching the session."""
    return "hello"


def read_only(session: Session, request: Request) -> Any:
    """Read ``session["n"]`` (``None`` if absent), changing nothing."""
    return session.get("n")


def counter(session: Session, request: Request) -> int:
    """Add one to ``session["n"]`` and return it."""
    session["n"] = session.get("n", 0) + 1
    n: int = session["n"]
    return n


def incr(session: Session, request: Request) -> int:
    """Add one to the key named by ``?k=``, as a read-modify-write by the handler."""
    key = request.args["k"]
    session[key] = session.get(key, 0) + 1
    value: int = session[key]
    return value


def dump(session: Session, request: Request) -> dict[str, Any]:
    """Return the session's data."""
    return dict(session)


def peek(session: Session, request: Request) -> dict[str, Any]:
    """What the handler sees: the data, and whether the session is new or expired."""
    return {"data": dict(session), "new": session.new, "expired": session.expired}


def put(session: Session, request: Request) -> str:
    """Set the key ``?key=`` to ``?value=``."""
    session[request.args["key"]] = request.args["value"]
    return "ok"


def login(session: Session, request: Request) -> str:
    """Log in as ``?user=`` (``ann``): a new id, then the user's name under ``"user"``
    and as ``user_id``; ``?remember=1`` remembers the session, ``?flash=text`` sets
    ``"flash"`` for 30 seconds."""
    session.regenerate()
    user = request.args.get("user", "ann")
    session["user"] = user
    session.user_id = user
    session.remember = request.args.get("remember") == "1"
    if "flash" in request.args:
        session.set("flash", request.args["flash"], timeout=30)
    return "ok"


def logout(session: Session, request: Request) -> str:
    """End the session: ``invalidate()``."""
    session.invalidate()
    return "bye"


def meanwhile(other_request: Callable[[], object], **writes: Any) -> Handler:
    """A handler that loads its session, waits while *other_request* runs (another
    request on the same session, which finishes first), then sets *writes*.

    Two requests interleaved in one thread: what a slow request meets when a quicker
    one (another tab, a logout, a login) saves between its read and its save.
    """

    def handler(session: Session, request: Request) -> str:
        session.get("n")  # loaded before the other request
        other_request()
        session.update(writes)
        return "ok"

    return handler


# -- users -------------------------------------------------------------------------------------


def whoami(session: Session, request: Request) -> Any:
    """The session's user and handle."""
    return {"user": session.user_id, "handle": session.handle}


def forget_user(session: Session, request: Request) -> str:
    """Unlink the session from its user."""
    session.user_id = None
    return "ok"


#: An app to log users in and out with: ``/`` is :func:`whoami`.
USER_ROUTES: dict[str, Handler] = {
    "/login": login,
    "/": whoami,
    "/logout": logout,
    "/forget": forget_user,
    "/inc": counter,
    "/dump": dump,
}


def user_app(store: Store | str = "memory://", **options: Any) -> SessionMiddleware:
    """The middleware over :data:`USER_ROUTES`."""
    _, middleware = make_client(USER_ROUTES, store=store, **options)
    return middleware


def log_in(middleware: SessionMiddleware, user: str = "ann", **environ: Any) -> Client:
    """A new browser on *middleware*, logged in as *user*."""
    client = Client(middleware)
    client.get(f"/login?user={user}", environ_overrides=environ or None)
    return client


def handle_of(client: Client) -> str:
    """The handle of *client*'s session, as :func:`whoami` says."""
    handle = body(client.get("/"))["handle"]
    assert isinstance(handle, str)
    return handle


# -- pickle ------------------------------------------------------------------------------------


def _spring(marker: str) -> None:
    Path(marker).write_text("unpickled")


class PickleTrap:
    """Unpickling this writes *marker*: a stand-in for ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return _spring, (str(self.marker),)


# -- what a response, a client and a store hold -----------------------------------------------


def set_cookies(response: TestResponse) -> list[str]:
    """The Set-Cookie headers of *response*."""
    return response.headers.getlist("Set-Cookie")


def deletes_the_cookie(header: str, name: str = "session_id") -> bool:
    """Whether the Set-Cookie *header* deletes the cookie *name* (empty, ``Max-Age=0``)."""
    return header.startswith(f"{name}=;") and "Max-Age=0" in header


def body(response: TestResponse) -> Any:
    """The JSON body of *response*."""
    return json.loads(response.get_data(as_text=True))


def cookie_value(client: Client, name: str = "session_id") -> str:
    """The value of the cookie *name* that *client* holds."""
    cookie = client.get_cookie(name)
    assert cookie is not None
    return cookie.value


def id_of(value: str) -> str:
    """The session id in the cookie *value* (its signature cut off)."""
    return value.rsplit(".", 1)[0]


def session_id_of(client: Client, name: str = "session_id") -> str:
    """The session id in the cookie *client* holds."""
    return id_of(cookie_value(client, name))


def key_of(client: Client, name: str = "session_id") -> str:
    """The store key of the session whose cookie *client* holds."""
    return store_key(session_id_of(client, name))


def holds_no_session(store: Store, key: str) -> bool:
    """Whether *key* holds nothing, or only the tombstone a regenerate left there."""
    record = store.load(key)
    return record is None or record.version == 0


# -- a real server, and a browser of it -----------------------------------------------------


@contextlib.contextmanager
def serving(app: Any, threads: int = 4) -> Iterator[tuple[str, int]]:
    """Serve *app* with waitress (*threads* threads) on a free loopback port; yield
    its address until the block ends."""
    server = create_server(app, host="127.0.0.1", port=0, threads=threads)
    assert isinstance(server, TcpWSGIServer)
    stop = threading.Event()

    def run() -> None:
        # server.run() loops until its map is empty. This loop also ends when told,
        # then closes every socket and the trigger on its own thread: closed from
        # another, the trigger pipe could go while a wake-up is still being written.
        while not stop.is_set():
            wasyncore.loop(timeout=0.05, map=server._map, count=1)
        wasyncore.close_all(server._map)

    thread = threading.Thread(target=run, name="waitress", daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.effective_port
    finally:
        # The task threads go first: a finished task still pulls the trigger.
        server.task_dispatcher.shutdown()
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()


class HTTPBrowser:
    """One HTTP client with a session cookie, on a keep-alive connection of its own."""

    def __init__(self, address: tuple[str, int], cookie: str | None = None) -> None:
        self.connection = http.client.HTTPConnection(*address, timeout=120)
        self.cookie = cookie

    def get(self, path: str) -> tuple[int, list[str], Any]:
        """GET *path*; return the status, the Set-Cookie headers and the JSON body."""
        headers = {} if self.cookie is None else {"Cookie": f"session_id={self.cookie}"}
        self.connection.request("GET", path, headers=headers)
        response = self.connection.getresponse()
        payload = response.read()
        set_cookies = response.headers.get_all("Set-Cookie") or []
        for header in set_cookies:
            morsel = SimpleCookie(header).get("session_id")
            if morsel is not None and morsel.value:
                self.cookie = morsel.value
        text = payload.decode()
        return response.status, set_cookies, json.loads(text) if response.status == 200 else text

    def close(self) -> None:
        self.connection.close()


# -- threads -----------------------------------------------------------------------------------


def run_together(count: int, target: Callable[[int], object]) -> list[BaseException]:
    """Run *target(n)* in *count* threads released together; return what they raised."""
    barrier = threading.Barrier(count)
    failures: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait()
            target(n)
        except BaseException as exc:  # handed to the test, which reports it
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


#: How long a test waits for another thread's or process's progress before failing.
PATIENCE = 30.0


def in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run *target* in a daemon thread; the list gets what it returned or raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:  # handed to the test, which asserts on it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_until(
    what: str, done: Callable[[], bool], timeout: float = 30.0, every: float = 0.01
) -> None:
    """Poll *done* every *every* seconds until it is true; fail after *timeout* seconds.

    For another thread's or process's progress, or a real server getting ready: never
    for time to pass (move the ``clock`` instead).
    """
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"not done after {timeout:.0f} s: {what}")
        time.sleep(every)


# -- child processes ---------------------------------------------------------------------------

_SRC = str(Path(wsgisession.__file__).resolve().parents[1])
#: The environment of a child Python: it imports this checkout's wsgisession.
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [_SRC, os.environ.get("PYTHONPATH")])),
}


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """Wait for the child *proc*, which must succeed; return its output."""
    with proc:
        out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def communicate_within(proc: subprocess.Popen[str], timeout: float, hang: str) -> tuple[str, str]:
    """The output of the child *proc*; kill it and fail with *hang* if it runs longer
    than *timeout* seconds (a deadlock, a loop that never ends)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(hang)


def merging_writer_code(open_store: str) -> str:
    """The code of a child process that writes one session by compare-and-set.

    *open_store* sets ``store`` from ``sys.argv[1]``; the child then sets ``data[name]``
    to 0, 1, … up to ``writes - 1`` in the JSON record under ``key``, retrying each
    write that lost a round. Arguments: the store's, key, name, writes, and the
    ``time.time()`` to start at (so that several children start together).
    """
    return f"""
import json, sys, time
from wsgisession.testing import make_record
{open_store}
key, name, writes = sys.argv[2], sys.argv[3], int(sys.argv[4])
time.sleep(max(0.0, float(sys.argv[5]) - time.time()))  # start together
for i in range(writes):
    while True:
        current = store.load(key)
        data = json.loads(current.data)
        data[name] = i
        new = make_record(json.dumps(data).encode(), version=current.version + 1)
        if store.save(key, new, expected_version=current.version):
            break
store.close()
"""


def python_child(code: str, *args: object) -> subprocess.Popen[str]:
    """Start ``python -c code args…`` with pipes for its text output."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )


def check_a_forked_child_reads_its_own(store: Store) -> None:
    """Fork while *store* holds a connection: 300 loads each in the parent and the
    child, of a session of each's own, must each read their own record, so no reply
    went to the other process's command."""
    mine, childs = new_key(), new_key()
    assert store.save(mine, make_record(b"parent"), expected_version=None)
    assert store.save(childs, make_record(b"child"), expected_version=None)
    assert store.load(mine) is not None  # the parent's connection is held
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 0
        try:
            for _ in range(300):
                record = store.load(childs)
                if record is None or record.data != b"child":
                    code = 1
                    break
        except BaseException:
            code = 2
        os._exit(code)
    wrong = 0
    for _ in range(300):
        record = store.load(mine)
        if record is None or record.data != b"parent":
            wrong += 1
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert wrong == 0


def check_threads_read_their_own(store: Store, threads: int = 8) -> None:
    """*threads* threads each load and save a session of its own 40 times, on *store*
    at once: each must read its own record every time, as its last save left it."""
    keys = [new_key() for _ in range(threads)]
    for n, key in enumerate(keys):
        assert store.save(key, make_record(str(n).encode()), expected_version=None)
    wrong: list[str] = []

    def work(n: int) -> None:
        key = keys[n]
        for version in range(1, 41):
            record = store.load(key)
            if record is None or record.data != f"{n}".encode() * version:
                wrong.append(f"{n}: {record}")
                return
            data = f"{n}".encode() * (version + 1)
            assert store.save(
                key, make_record(data, version=version + 1), expected_version=version
            )

    run_threads(threads, work)
    assert wrong == []


def check_threads_that_end_hand_on(store: Store, connections: Callable[[], int]) -> None:
    """Threads that come and go (a server with a thread per request) must reuse the
    connections of those that ended: *connections*, the server's count, grows by one
    at most over 20 threads, each handing its connection to the next."""
    key = new_key()
    assert store.save(key, make_record(b"x"), expected_version=None)
    before = connections()
    for _ in range(20):
        thread = threading.Thread(target=store.load, args=(key,))
        thread.start()
        thread.join()
    assert connections() <= before + 1


def check_close_waits_for_a_command(
    store: Store, proxy: SlowReplies, connections: Callable[[], int], idle: int
) -> None:
    """Close *store* (whose server is behind *proxy*) while a load waits for its reply:
    the load must still get its record, and the store's connections all close, down
    to the server's count *idle*."""
    key = new_key()
    assert store.save(key, make_record(b"x"), expected_version=None)
    loaded: list[object] = []
    proxy.delay = 0.5
    thread = threading.Thread(target=lambda: loaded.append(store.load(key)))
    thread.start()
    assert proxy.holding.wait(PATIENCE), "the load's command never reached the server"
    store.close()  # while the load waits for its reply
    thread.join()
    proxy.delay = 0.0
    record = loaded[0]
    assert isinstance(record, Record) and record.data == b"x"
    wait_until("the store's connections closed", lambda: connections() == idle)


def check_a_late_reply_is_never_read(store: Store, proxy: SlowReplies) -> None:
    """A load that timed out (the store's timeout is 0.3 s, its server behind *proxy*)
    must leave nothing for the next command to read as its own reply."""
    first, second = new_key(), new_key()
    assert store.save(first, make_record(b"first"), expected_version=None)
    assert store.save(second, make_record(b"second"), expected_version=None)
    proxy.delay = 0.6
    with pytest.raises(StoreError, match="[Tt]ime(d )?out"):
        store.load(first)
    proxy.delay = 0.0
    # The first reply reaches the client's socket 0.3 s after the timeout; the next
    # command goes before the connection has sat idle for a second, when the store
    # would look at it first.
    time.sleep(0.5)
    loaded = store.load(second)
    assert loaded is not None and loaded.data == b"second"

"""Store down: a real server keeps running while its store goes away and comes back.

The Flask demo (``examples/flask_app.py``) runs under waitress in this process, on a
free loopback port, with its sessions in a private ``redis-server`` (stopped and started
again on the same port, its data kept in an append-only file), or in PostgreSQL,
MariaDB or a private ``memcached`` behind a TCP proxy that is cut and restored; the
shared servers are never stopped. While the store is down, every request that needs
the session is a 500 and the others still answer; once it is back, the very next
requests succeed without restarting anything, and every session saved before the
outage is still there.

Memcached keeps nothing across a restart, so a private ``memcached`` killed and started
again under load is a test of its own: 500s while it is gone, recovery without
restarting the app, and every session of before read as gone, never as an error.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import itertools
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from flask import Flask, request

from tests.helpers import SERVER, server_url, serving, unreachable, wait_until
from tests.memcached_servers import MemcachedServer
from tests.redis_servers import RedisServer
from tests.tcp_proxy import TCPProxy
from wsgisession import StoreError, get_session

if TYPE_CHECKING:
    pass

pytestmark = SERVER

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flask_app.py"
COUNT = re.compile(r'<span id="count">(\d+)</span>')
CLIENTS = 4


def _flask_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("outage_flask_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Outage:
    """A store that a test can take down and bring back."""

    url: str
    options: dict[str, Any]
    stop: Callable[[], None]
    start: Callable[[], None]


@pytest.fixture
def redis_outage(private_redis: RedisServer) -> Outage:
    """A private Redis server with an append-only file, stopped and started in place."""
    return Outage(private_redis.url, {}, private_redis.stop, private_redis.start)


@contextlib.contextmanager
def _sql_outage(kind: str) -> Iterator[Outage]:
    url = sa.make_url(server_url(kind))
    default_port = {"postgresql": 5432, "mariadb": 3306}[kind]
    direct = sa.create_engine(url)
    try:
        with direct.connect():
            pass
    except sa.exc.SQLAlchemyError as exc:
        direct.dispose()
        unreachable(server_url(kind), exc)
    table_name = f"test_sessions_{uuid.uuid4().hex[:12]}"
    try:
        with TCPProxy((url.host or "127.0.0.1", url.port or default_port)) as proxy:
            proxied = url.set(host="127.0.0.1", port=proxy.port)
            try:
                yield Outage(
                    proxied.render_as_string(hide_password=False),
                    {"table_name": table_name},
                    proxy.cut,
                    proxy.restore,
                )
            finally:
                proxy.restore()
    finally:
        # The shared database outlives the test: drop its table straight, not through
        # the proxy, which may be cut.
        sa.Table(table_name, sa.MetaData()).drop(direct, checkfirst=True)
        direct.dispose()


@pytest.fixture
def memcached_outage(private_memcached: MemcachedServer) -> Iterator[Outage]:
    """A private memcached behind a proxy that the test cuts and restores."""
    with TCPProxy(("127.0.0.1", private_memcached.port)) as proxy:
        try:
            yield Outage(
                f"memcached://127.0.0.1:{proxy.port}",
                {"timeout": 2, "connect_timeout": 2},
                proxy.cut,
                proxy.restore,
            )
        finally:
            proxy.restore()


@pytest.fixture
def postgresql_outage() -> Iterator[Outage]:
    """PostgreSQL behind a proxy that the test cuts and restores."""
    with _sql_outage("postgresql") as outage:
        yield outage


@pytest.fixture
def mariadb_outage() -> Iterator[Outage]:
    """MariaDB behind a proxy that the test cuts and restores."""
    with _sql_outage("mariadb") as outage:
        yield outage


class Browser:
    """One client with its own session cookie, sent back on every request."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.cookie: str | None = None

    def get(self, path: str) -> tuple[int, str]:
        """GET *path*; return the status and the body, and keep any new cookie."""
        conn = http.client.HTTPConnection(*self.address, timeout=10)
        try:
            headers = {} if self.cookie is None else {"Cookie": f"session_id={self.cookie}"}
            conn.request("GET", path, headers=headers)
            with conn.getresponse() as response:
                body = response.read().decode()
                for header in response.headers.get_all("Set-Cookie") or []:
                    name, _, value = header.split(";", 1)[0].partition("=")
                    if name.strip() == "session_id":
                        self.cookie = value.strip() or None
                return response.status, body
        finally:
            conn.close()

    def count(self) -> int:
        """Visit the counter page; return the count it shows."""
        status, body = self.get("/")
        assert status == 200, body[:300]
        match = COUNT.search(body)
        assert match is not None, body[:300]
        return int(match.group(1))


@contextlib.contextmanager
def demo(outage: Outage) -> Iterator[tuple[str, int]]:
    """Serve the Flask demo on *outage*'s store, plus ``/health`` and ``/peek`` routes."""
    flask_app: Flask = _flask_example().create_app(
        secret_key="outage-tests-secret-long-enough-for-a-key",
        store=outage.url,
        store_options=outage.options,
        cleanup_interval=0,
    )
    # A route that never touches the session, so it must not notice the outage.
    flask_app.add_url_rule("/health", "health", lambda: "ok")

    def peek() -> str:
        # An app may choose to catch StoreError and answer without the session.
        session = get_session(request.environ)
        try:
            return str(session.get("count"))
        except StoreError:
            return "store down"

    flask_app.add_url_rule("/peek", "peek", peek)
    try:
        with serving(flask_app) as address:
            yield address
    finally:
        flask_app.wsgi_app.close()  # type: ignore[attr-defined]


KINDS = ["redis", "postgresql", "mariadb", "memcached"]


#: What a hammering client records when a count of 1 comes after ``Hammer.restarted``.
FRESH = -1


@dataclass
class Hammer:
    """What CLIENTS browsers, each requesting ``/`` over and over, saw: the counts of
    their 200s, the statuses (and FRESH for a new session after ``restarted`` is set),
    and what they raised."""

    seen: list[list[int]]
    statuses: list[set[int]]
    errors: list[BaseException]
    restarted: threading.Event

    def wait(self, what: str, done: Callable[[list[int], set[int]], bool]) -> None:
        """Wait until *done(counts, statuses)* holds for every client."""
        wait_until(what, lambda: all(map(done, self.seen, self.statuses)))

    def wait_counting_again(self) -> None:
        """Wait until every client has counted three more times than it has now."""
        after = [len(s) for s in self.seen]
        wait_until(
            "every client counted again",
            lambda: all(len(s) >= n + 3 for s, n in zip(self.seen, after, strict=True)),
        )


@contextlib.contextmanager
def hammering(address: tuple[str, int]) -> Iterator[Hammer]:
    """Run CLIENTS browsers against *address* until the block ends."""
    hammer = Hammer(
        [[] for _ in range(CLIENTS)], [set() for _ in range(CLIENTS)], [], threading.Event()
    )
    done = threading.Event()

    def visit(n: int) -> None:
        browser = Browser(address)
        counts, statuses = hammer.seen[n], hammer.statuses[n]
        try:
            while not done.is_set():
                status, body = browser.get("/")
                statuses.add(status)
                if status == 200:
                    match = COUNT.search(body)
                    assert match is not None, body[:300]
                    counts.append(int(match.group(1)))
                    if hammer.restarted.is_set() and counts[-1] == 1:
                        statuses.add(FRESH)
        except BaseException as exc:  # reported by the test
            hammer.errors.append(exc)

    threads = [threading.Thread(target=visit, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        hammer.wait("every client counted", lambda counts, _: len(counts) >= 3)
        yield hammer
    finally:
        done.set()
        for thread in threads:
            thread.join()


@pytest.mark.parametrize("kind", KINDS)
def test_requests_fail_while_the_store_is_down_and_recover_with_every_session(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The app keeps running through an outage: 500s meanwhile, nothing lost after."""
    outage: Outage = request.getfixturevalue(f"{kind}_outage")
    with demo(outage) as address:
        browsers = [Browser(address) for _ in range(CLIENTS)]
        saved: list[int] = []
        for n, browser in enumerate(browsers):
            for visit in range(1, n + 3):
                assert browser.count() == visit
            saved.append(n + 2)
        assert all(browser.cookie for browser in browsers)

        outage.stop()
        for browser in browsers:
            status, _ = browser.get("/")
            assert status == 500
            assert browser.get("/health") == (200, "ok")
            assert browser.get("/peek") == (200, "store down")
        # A new visitor's first save fails too: an error, never a silent loss.
        newcomer = Browser(address)
        assert newcomer.get("/")[0] == 500
        assert newcomer.cookie is None

        outage.start()
        for browser, before in zip(browsers, saved, strict=True):
            assert browser.get("/peek") == (200, str(before))
            assert browser.count() == before + 1
        assert newcomer.count() == 1
        for browser, before in zip(browsers, saved, strict=True):
            assert browser.count() == before + 2


@pytest.mark.parametrize("kind", KINDS)
def test_clients_hammering_through_an_outage_never_lose_a_saved_count(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Requests in flight when the store goes are 500s; no 200 is ever taken back.

    Every count a client was shown was saved before the page was sent, so the counts
    one client sees must rise strictly, across the outage too. A write whose reply was
    lost when the connection dropped may have been applied, so a count may skip one;
    it may never repeat or start again from 1.
    """
    outage: Outage = request.getfixturevalue(f"{kind}_outage")
    with demo(outage) as address, hammering(address) as hammer:
        outage.stop()
        hammer.wait("every client failed", lambda _, statuses: 500 in statuses)
        outage.start()
        hammer.wait_counting_again()

    assert not hammer.errors, hammer.errors
    for counts, status in zip(hammer.seen, hammer.statuses, strict=True):
        assert status == {200, 500}
        assert counts[0] == 1
        assert all(b > a for a, b in itertools.pairwise(counts)), counts


def test_a_memcached_killed_under_load_fails_requests_then_serves_new_sessions(
    private_memcached: MemcachedServer,
) -> None:
    """Killed (SIGKILL) while clients hammer it, then started again on the same port:
    the requests in between are 500s, the app recovers by itself, and the sessions of
    before, which memcached did not keep, start again from 1: never an error, and
    never a count that goes on from another session's."""
    outage = Outage(
        private_memcached.url,
        {"timeout": 2, "connect_timeout": 2},
        private_memcached.kill,
        private_memcached.start,
    )
    with demo(outage) as address, hammering(address) as hammer:
        outage.stop()
        hammer.restarted.set()
        hammer.wait("every client failed", lambda _, statuses: 500 in statuses)
        outage.start()
        hammer.wait("every client started again", lambda _, statuses: FRESH in statuses)
        hammer.wait_counting_again()

    assert not hammer.errors, hammer.errors
    for counts, status in zip(hammer.seen, hammer.statuses, strict=True):
        assert status == {200, 500, FRESH}
        restart = max(i for i, count in enumerate(counts) if count == 1)
        assert restart > 0, "no count before the restart"
        for part in (counts[:restart], counts[restart:]):
            assert part[0] == 1
            assert all(b > a for a, b in itertools.pairwise(part)), counts

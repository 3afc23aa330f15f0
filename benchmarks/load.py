"""Load run: the Flask demo under real WSGI servers, driven by many clients at once.

Run it by hand, from the repository root (it is never part of the test suite)::

    python benchmarks/load.py [--stores file,sqlite,postgresql,redis]
                              [--servers waitress,gunicorn] [--seconds 10] [--clients 32]

For each store and server, it starts ``examples/flask_app.py`` (``create_app``) in its
own process on a free loopback port, under waitress (one process of ``--threads``
threads) or gunicorn (``--workers`` gthread workers of ``--worker-threads`` threads, or
``--worker-class sync``), with two routes added for the run: ``/put?k=&v=`` sets one
key and answers the whole session as JSON, ``/get`` answers it unchanged. The demo's
own ``/`` (the counter) is part of the mix.

Every client is a thread with its own cookie, and so its own session. Each request
changes one of the client's keys (or its counter) and reads the session back; the
answer must equal what the client has written so far, exactly. Connections are
dropped every few requests, so under gunicorn a session moves between processes. When
the time is up, each client reads its session once more. Reported: requests per
second, p50 and p99 latency (measured by the client), errors (any failed request or
non-200 answer), stale reads (an answer that missed one of the client's own writes)
and lost updates (keys whose final value is not the last one written). The last three
must be 0.

The results are printed as a Markdown table and written to
``benchmarks/results/load.md`` and ``load.json``. Everything the run creates (a temporary
directory, a table named ``bench_sessions_<random>``, Redis keys under
``bench:<random>:``) is removed at the end. Server stores are found as the tests find
them: ``WSGISESSION_TEST_POSTGRESQL_URL``, ``WSGISESSION_TEST_MARIADB_URL`` and
``WSGISESSION_TEST_REDIS_URL``, else the loopback defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

STORES = ("file", "sqlite", "postgresql", "mariadb", "redis")
SERVERS = ("waitress", "gunicorn")
DEFAULT_STORES = ("file", "sqlite", "postgresql", "redis")
SERVER_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mariadb+pymysql://root@127.0.0.1:3306/test",
    "redis": "redis://127.0.0.1:6379/0",
}
COOKIE = "session_id"
# Every client's keys; a request changes one of them or the demo's counter.
KEYS = ("a", "b", "c", "d")
# Requests on one connection before the client drops it and opens another.
RECONNECT_EVERY = 8
START_TIMEOUT = 30.0


# -- the application, in the server's process ------------------------------------------


def server_app() -> Any:
    """Build the demo app for the server process, from the ``LOAD_*`` environment.

    ``LOAD_STORE`` is the store URL, ``LOAD_STORE_OPTIONS`` a JSON object of store
    options. Called by waitress (``--call load:server_app``) and gunicorn
    (``load:server_app()``).
    """
    from flask import jsonify, request

    from wsgisession import get_session

    spec = importlib.util.spec_from_file_location("flask_app", ROOT / "examples" / "flask_app.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    app = example.create_app(
        secret_key=os.environ["LOAD_SECRET_KEY"],
        store=os.environ["LOAD_STORE"],
        store_options=json.loads(os.environ.get("LOAD_STORE_OPTIONS", "{}")),
    )

    def put() -> Any:
        session = get_session(request.environ)
        session[request.args["k"]] = request.args["v"]
        return jsonify(session=dict(session), pid=os.getpid())

    def get() -> Any:
        return jsonify(session=dict(get_session(request.environ)), pid=os.getpid())

    app.add_url_rule("/put", "put", put)
    app.add_url_rule("/get", "get", get)
    app.add_url_rule("/health", "health", lambda: "ok")
    return app


# -- stores ---------------------------------------------------------------------------


@dataclass
class StoreSetup:
    """A store for one run: its URL, its options, and how to remove what it holds."""

    name: str
    url: str
    options: dict[str, Any]

    def clean(self) -> None:
        """Drop the run's table or delete its Redis keys; files go with the temp dir."""
        if self.name in ("postgresql", "mariadb"):
            import sqlalchemy as sa

            engine = sa.create_engine(self.url)
            try:
                table = sa.Table(self.options["table_name"], sa.MetaData())
                table.drop(engine, checkfirst=True)
            finally:
                engine.dispose()
        elif self.name == "redis":
            import redis

            with redis.Redis.from_url(self.url) as client:
                names = list(client.scan_iter(match=self.options["key_prefix"] + "*"))
                for start in range(0, len(names), 500):
                    client.delete(*names[start : start + 500])


def store_setup(name: str, directory: Path) -> StoreSetup:
    """Return a store of kind *name* that no other run uses."""
    token = uuid.uuid4().hex[:12]
    if name == "file":
        return StoreSetup(name, f"file:{directory / 'sessions'}", {})
    if name == "sqlite":
        return StoreSetup(name, f"sqlite:///{directory / 'sessions.db'}", {})
    url = os.environ.get(f"WSGISESSION_TEST_{name.upper()}_URL", SERVER_URLS[name])
    if name == "redis":
        return StoreSetup(name, url, {"key_prefix": f"bench:{token}:"})
    return StoreSetup(name, url, {"table_name": f"bench_sessions_{token}"})


# -- servers --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerPlan:
    """How many processes and threads each server runs."""

    waitress_threads: int
    gunicorn_workers: int
    gunicorn_threads: int
    gunicorn_class: str = "gthread"

    def describe(self, server: str) -> str:
        """One line saying how *server* runs."""
        if server == "waitress":
            return f"waitress, 1 process x {self.waitress_threads} threads"
        return (
            f"gunicorn, {self.gunicorn_workers} gthread workers x {self.gunicorn_threads} threads"
        )

    def command(self, server: str, port: int) -> list[str]:
        """The command line that serves the app with *server* on *port*."""
        if server == "waitress":
            return [
                sys.executable,
                "-m",
                "waitress",
                f"--listen=127.0.0.1:{port}",
                f"--threads={self.waitress_threads}",
                "--call",
                "load:server_app",
            ]
        return [
            sys.executable,
            "-m",
            "gunicorn",
            f"--bind=127.0.0.1:{port}",
            f"--workers={self.gunicorn_workers}",
            f"--worker-class={self.gunicorn_class}",
            f"--threads={self.gunicorn_threads}",
            "--graceful-timeout=5",
            "--log-level=warning",
            "load:server_app()",
        ]


def free_port() -> int:
    """A loopback port that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_server(
    server: str, plan: ServerPlan, store: StoreSetup, log_path: Path
) -> Iterator[tuple[str, int]]:
    """Start *server* with the demo on *store*; yield its address; stop it after."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        "LOAD_SECRET_KEY": uuid.uuid4().hex,
        "LOAD_STORE": store.url,
        "LOAD_STORE_OPTIONS": json.dumps(store.options),
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            plan.command(server, port),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(("127.0.0.1", port), process, log_path)
        yield "127.0.0.1", port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(address: tuple[str, int], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{_tail(log)}")
        conn = http.client.HTTPConnection(*address, timeout=2)
        try:
            conn.request("GET", "/health")
            with conn.getresponse() as response:
                response.read()
                if response.status == 200:
                    return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready after {START_TIMEOUT:.0f}s:\n{_tail(log)}")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


# -- clients --------------------------------------------------------------------------


class Failed(Exception):
    """A request did not get a 200 with a well-formed answer."""


@dataclass
class ClientResult:
    """What one client saw."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    stale_reads: int = 0
    lost_updates: int = 0
    pids: set[int] = field(default_factory=set)
    first_error: str | None = None


class Client:
    """One user: its own cookie (so its own session) and what it has written so far."""

    def __init__(self, number: int, address: tuple[str, int]) -> None:
        self.number = number
        self.address = address
        self.cookie: str | None = None
        self.expected: dict[str, Any] = {}
        self.result = ClientResult()
        self._conn: http.client.HTTPConnection | None = None
        self._sent = 0

    def close(self) -> None:
        """Close the client's connection, if one is open."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, path: str) -> str:
        """GET *path* with the client's cookie; return the body of its 200 answer.

        :raises Failed: The request failed or did not answer 200.
        """
        if self._conn is None:
            self._conn = http.client.HTTPConnection(*self.address, timeout=30)
        headers = {} if self.cookie is None else {"Cookie": f"{COOKIE}={self.cookie}"}
        try:
            self._conn.request("GET", path, headers=headers)
            with self._conn.getresponse() as response:
                body = response.read().decode()
                for header in response.headers.get_all("Set-Cookie") or []:
                    name, _, value = header.split(";", 1)[0].partition("=")
                    if name.strip() == COOKIE:
                        self.cookie = value.strip() or None
                status = response.status
        except (OSError, http.client.HTTPException, UnicodeDecodeError) as exc:
            self.close()
            raise Failed(f"{path}: {type(exc).__name__}: {exc}") from exc
        self._sent += 1
        if self._sent % RECONNECT_EVERY == 0:
            # A new connection may land on another gunicorn worker: sessions must
            # follow their client across processes, not live in one.
            self.close()
        if status != 200:
            raise Failed(f"{path}: HTTP {status}: {body[:200]}")
        return body

    def session(self, path: str) -> dict[str, Any]:
        """Request *path*, which answers JSON; return the session it holds."""
        body = self.request(path)
        try:
            answer = json.loads(body)
            session: dict[str, Any] = answer["session"]
            self.result.pids.add(int(answer["pid"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise Failed(f"{path}: malformed answer {body[:200]!r}") from exc
        return session

    def step(self, n: int) -> None:
        """Make the client's *n*-th change and check the session it reads back."""
        if n % 5 == 4 and "count" in self.expected:
            # The demo's own page: its counter is a read-modify-write of one key.
            body = self.request("/")
            marker = '<span id="count">'
            start = body.find(marker) + len(marker)
            self.expected["count"] += 1
            shown = body[start : body.find("<", start)]
            if shown != str(self.expected["count"]):
                self.result.stale_reads += 1
            return
        key = KEYS[n % len(KEYS)]
        value = f"{self.number}:{n}"
        query = urllib.parse.urlencode({"k": key, "v": value})
        self.expected[key] = value
        if self.session(f"/put?{query}") != self.expected:
            self.result.stale_reads += 1

    def resync(self) -> None:
        """After a failed request, take what the server holds as the expected state.

        The failure is already counted; this keeps one unknown outcome from being
        counted again as a lost update.
        """
        with contextlib.suppress(Failed):
            self.expected = self.session("/get")

    def verify(self) -> None:
        """Read the session once more and count keys that lost their last write."""
        try:
            held = self.session("/get")
        except Failed as exc:
            self._error(exc)
            self.result.lost_updates += len(self.expected)
            return
        names = held.keys() | self.expected.keys()
        self.result.lost_updates += sum(1 for k in names if held.get(k) != self.expected.get(k))

    def _error(self, exc: Failed) -> None:
        self.result.errors += 1
        if self.result.first_error is None:
            self.result.first_error = str(exc)


def drive(
    address: tuple[str, int], clients: int, seconds: float
) -> tuple[list[ClientResult], float]:
    """Run *clients* clients against *address* for *seconds*; return what each saw.

    Each client first starts its session (and its counter) untimed; then all go at
    once until the time is up, and each checks its session at the end.
    """
    team = [Client(n, address) for n in range(clients)]
    ready = threading.Barrier(clients + 1)
    stop = threading.Event()

    def run(client: Client) -> None:
        try:
            try:
                client.request("/")
                client.expected["count"] = 1
            except Failed as exc:
                client._error(exc)
            ready.wait(timeout=START_TIMEOUT)
            n = 0
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    client.step(n)
                except Failed as exc:
                    client._error(exc)
                    client.resync()
                else:
                    client.result.latencies.append(time.perf_counter() - started)
                n += 1
            client.verify()
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(c,), name=f"client-{c.number}") for c in team]
    for thread in threads:
        thread.start()
    ready.wait(timeout=START_TIMEOUT)
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - started
    for thread in threads:
        thread.join()
    return [c.result for c in team], elapsed


# -- a run ----------------------------------------------------------------------------


@dataclass
class Row:
    """The figures of one store under one server."""

    store: str
    server: str
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    stale_reads: int
    lost_updates: int
    processes: int
    first_error: str | None


def measure(store_name: str, server: str, plan: ServerPlan, clients: int, seconds: float) -> Row:
    """Serve the demo on one store with one server, drive it, and clean up after."""
    with tempfile.TemporaryDirectory(prefix="wsgisession-load-") as tmp:
        directory = Path(tmp)
        store = store_setup(store_name, directory)
        try:
            with running_server(server, plan, store, directory / "server.log") as address:
                results, elapsed = drive(address, clients, seconds)
        finally:
            store.clean()
    latencies = sorted(x for r in results for x in r.latencies)
    errors = [r.first_error for r in results if r.first_error]
    return Row(
        store=store_name,
        server=server,
        requests=len(latencies),
        seconds=round(elapsed, 2),
        requests_per_second=round(len(latencies) / elapsed, 1),
        p50_ms=round(_quantile(latencies, 0.50) * 1000, 2),
        p99_ms=round(_quantile(latencies, 0.99) * 1000, 2),
        errors=sum(r.errors for r in results),
        stale_reads=sum(r.stale_reads for r in results),
        lost_updates=sum(r.lost_updates for r in results),
        processes=len(set().union(*(r.pids for r in results))),
        first_error=errors[0] if errors else None,
    )


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=1000, method="inclusive")[round(q * 1000) - 1]


def machine() -> dict[str, str]:
    """What the figures were measured on."""

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{name: version(name) for name in ("wsgisession", "flask", "waitress", "gunicorn")},
        **{name: version(name) for name in ("sqlalchemy", "psycopg", "redis")},
    }


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| store | server | requests/s | p50 ms | p99 ms | errors | stale reads "
        "| lost updates | processes |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.store} | {r.server} | {r.requests_per_second:.0f} | {r.p50_ms:.1f} "
            f"| {r.p99_ms:.1f} | {r.errors} | {r.stale_reads} | {r.lost_updates} "
            f"| {r.processes} |"
        )
    return "\n".join(lines)


def _names(value: str, allowed: tuple[str, ...]) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {value!r}")
    return names


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(value: str) -> int | float:
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
        return number

    return parse


def main(argv: list[str] | None = None) -> int:
    """Run the load for every store and server asked for; 1 if any run lost or failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", type=lambda v: _names(v, STORES), default=list(DEFAULT_STORES))
    parser.add_argument("--servers", type=lambda v: _names(v, SERVERS), default=list(SERVERS))
    parser.add_argument(
        "--seconds", type=_positive(float), default=10.0, help="per store and server"
    )
    parser.add_argument("--clients", type=_positive(int), default=32, help="concurrent clients")
    parser.add_argument("--threads", type=_positive(int), default=8, help="waitress threads")
    parser.add_argument("--workers", type=_positive(int), default=4, help="gunicorn workers")
    parser.add_argument(
        "--worker-threads", type=_positive(int), default=4, help="per gunicorn worker"
    )
    parser.add_argument(
        "--worker-class", choices=("gthread", "sync"), default="gthread", help="gunicorn's"
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    plan = ServerPlan(args.threads, args.workers, args.worker_threads, args.worker_class)
    rows: list[Row] = []
    for store_name in args.stores:
        for server in args.servers:
            print(f"{store_name} / {plan.describe(server)} ...", file=sys.stderr, flush=True)
            row = measure(store_name, server, plan, args.clients, args.seconds)
            if row.first_error:
                print(f"  first error: {row.first_error}", file=sys.stderr)
            rows.append(row)
    table = markdown(rows)
    about = machine()
    setup = {
        "clients": args.clients,
        "seconds": args.seconds,
        "servers": {s: plan.describe(s) for s in args.servers},
    }
    print(table)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        header = (
            f"Measured {about['date']} on {about['cpus']} CPUs ({about['platform']}), "
            f"Python {about['python']}, Flask {about['flask']}, waitress "
            f"{about['waitress']}, gunicorn {about['gunicorn']}; {args.clients} clients "
            f"for {args.seconds:g} s per row; {'; '.join(setup['servers'].values())}.\n\n"
        )
        (RESULTS / "load.md").write_text(header + table + "\n")
        payload = {"machine": about, "setup": setup, "rows": [asdict(r) for r in rows]}
        (RESULTS / "load.json").write_text(json.dumps(payload, indent=2) + "\n")
    bad = any(r.errors or r.stale_reads or r.lost_updates or not r.requests for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

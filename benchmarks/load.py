"""Load run: wsgisession, Beaker and Flask-Session under real WSGI servers, many clients.

Run it by hand, from the repository root (it is never part of the test suite)::

    python benchmarks/load.py [--libraries wsgisession,beaker,flask-session]
                              [--stores file,sqlite,postgresql,mariadb,redis,memcached]
                              [--servers waitress,gunicorn] [--seconds 10]
                              [--repeat 3] [--clients 32]

For each store and server, it serves one Flask app shape with each library as its
session layer in turn (``_load_apps.py``): wsgisession is the demo itself,
``examples/flask_app.py``; Beaker and Flask-Session run the same handlers. The routes
are the demo's counter ``/``, ``/put?k=&v=`` (set one key, answer the session as JSON)
and ``/get`` (answer it unchanged). Each run has its own process on a free loopback
port, under waitress (one process of ``--threads`` threads) or gunicorn (``--workers``
gthread workers of ``--worker-threads`` threads, or ``--worker-class sync``), and its
own directory, table or key prefix. Beaker has no backend for memcached here, so on
memcached wsgisession runs against Flask-Session alone.

The clients (``_load_clients.py``) each hold their own session, change it, and check
every answer. Reported per run: requests per second, p50 and p99 latency (measured by
the client), errors (any failed request or non-200 answer), stale reads (an answer that
missed one of the client's own writes) and lost updates (keys whose final value is not
the last one written). The last three must be 0, for every library alike.

The machine's speed drifts, so the libraries take turns: within each store and server,
``--repeat`` rounds run every library once, in an order that rotates from one round to
the next, and the report (``_load_report.py``) gives the medians of the rounds, then
wsgisession's requests/s and p99 against each peer's, as ratios. It is printed and
written to ``benchmarks/results/load.md`` and ``load.json``. The exit status is 1 if a
wsgisession run failed a request, read stale data or lost an update; a peer's failures
are in its rows and on stderr.

Everything a run creates (a temporary directory, a table named
``bench_sessions_<random>``, Redis and memcached keys under ``bench:<random>:`` or, for
Beaker, which has no prefix, under the ids of its clients' sessions) is removed at the
end. Server stores are found as the tests find them: ``WSGISESSION_TEST_POSTGRESQL_URL``,
``WSGISESSION_TEST_MARIADB_URL``, ``WSGISESSION_TEST_REDIS_URL`` and
``WSGISESSION_TEST_MEMCACHED_URL``, else the loopback defaults.
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
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _load_apps import COOKIES, LIBRARIES, NOT_SERVED
from _load_clients import START_TIMEOUT, ClientResult, drive
from _load_report import Row, compare, comparison_markdown, markdown, summarize

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

STORES = ("file", "sqlite", "postgresql", "mariadb", "redis", "memcached")
SERVERS = ("waitress", "gunicorn")
DEFAULT_STORES = ("file", "sqlite", "postgresql", "redis", "memcached")
SERVER_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mariadb+pymysql://root@127.0.0.1:3306/test",
    "redis": "redis://127.0.0.1:6379/0",
    "memcached": "memcached://127.0.0.1:11211",
}
SQL_STORES = ("sqlite", "postgresql", "mariadb")


# -- stores ---------------------------------------------------------------------------


@dataclass
class StoreSetup:
    """A store for one run: where it is, the run's namespace in it, how to empty it.

    *url* is a database, Redis or memcached URL, or for the file store the run's directory.
    *namespace* is the run's table name or key prefix, used by every library that has
    one; Beaker has no Redis key prefix, and its keys are found by session id.
    """

    name: str
    url: str
    namespace: str

    def clean(self, library: str, cookies: list[str]) -> None:
        """Drop the run's table or delete its keys; files go with the temp dir.

        *cookies* are the session cookies the clients held at the end: Beaker's Redis
        keys are named after the session ids in them.
        """
        if self.name in ("postgresql", "mariadb"):
            import sqlalchemy as sa

            engine = sa.create_engine(self.url)
            try:
                table = sa.Table(self.namespace, sa.MetaData())
                table.drop(engine, checkfirst=True)
            finally:
                engine.dispose()
        elif self.name == "redis":
            import redis

            with redis.Redis.from_url(self.url) as client:
                if library == "beaker":
                    # A signed Beaker cookie is a 40-digit HMAC followed by the id.
                    ids = [c.strip('"')[40:] for c in cookies]
                    names = [f"beaker_cache:{i}:session" for i in ids]
                else:
                    names = list(client.scan_iter(match=self.namespace + "*"))
                for start in range(0, len(names), 500):
                    client.delete(*names[start : start + 500])
        elif self.name == "memcached":
            from _contenders import delete_memcached_prefixes, memcached_address

            delete_memcached_prefixes(memcached_address(self.url), [self.namespace])


def store_setup(name: str, directory: Path) -> StoreSetup:
    """Return a store of kind *name* that no other run uses."""
    token = uuid.uuid4().hex[:12]
    if name == "file":
        return StoreSetup(name, str(directory), "")
    if name == "sqlite":
        return StoreSetup(name, f"sqlite:///{directory / 'sessions.db'}", "sessions")
    url = os.environ.get(f"WSGISESSION_TEST_{name.upper()}_URL", SERVER_URLS[name])
    if name in ("redis", "memcached"):
        return StoreSetup(name, url, f"bench:{token}:")
    return StoreSetup(name, url, f"bench_sessions_{token}")


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
                "_load_apps:server_app",
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
            "_load_apps:server_app()",
        ]


def free_port() -> int:
    """A loopback port that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_server(
    server: str, plan: ServerPlan, library: str, store: StoreSetup, log_path: Path
) -> Iterator[tuple[str, int]]:
    """Start *server* with *library*'s app on *store*; yield its address; stop it after."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        "LOAD_LIBRARY": library,
        "LOAD_SECRET_KEY": uuid.uuid4().hex,
        "LOAD_STORE": store.name,
        "LOAD_URL": store.url,
        "LOAD_NAMESPACE": store.namespace,
    }
    with log_path.open("ab") as log:
        if store.name in SQL_STORES:
            # The table first, in a process of its own: gunicorn's workers would race to
            # create it, and a peer that loses that race answers 500 (a start-up
            # artefact, not a load result).
            prepared = subprocess.run(
                [sys.executable, "-c", "import _load_apps; _load_apps.prepare()"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT,
            )
            if prepared.returncode:
                raise RuntimeError(f"preparing {library}'s table failed:\n{_tail(log_path)}")
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


# -- a run ----------------------------------------------------------------------------


def measure(
    library: str,
    store_name: str,
    server: str,
    plan: ServerPlan,
    clients: int,
    seconds: float,
    *,
    round_: int = 0,
    position: int = 0,
) -> Row:
    """Serve *library*'s app on one store with one server, drive it, and clean up after."""
    with tempfile.TemporaryDirectory(prefix="wsgisession-load-") as tmp:
        directory = Path(tmp)
        store = store_setup(store_name, directory)
        results: list[ClientResult] = []
        try:
            log = directory / "server.log"
            with running_server(server, plan, library, store, log) as address:
                results, elapsed = drive(address, COOKIES[library], clients, seconds)
        finally:
            store.clean(library, [r.cookie for r in results if r.cookie])
    latencies = sorted(x for r in results for x in r.latencies)
    errors = [r.first_error for r in results if r.first_error]
    return Row(
        library=library,
        store=store_name,
        server=server,
        round=round_,
        position=position,
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


def schedule(
    libraries: list[str], stores: list[str], servers: list[str], repeat: int
) -> list[tuple[str, str, int, list[str]]]:
    """Every (store, server, round) in turn, with the order the libraries run in.

    The order rotates by one from each block to the next, so that on a machine whose
    speed drifts no library always runs first, or always right after another's load.
    """
    blocks = []
    turn = 0
    for store in stores:
        for server in servers:
            for round_ in range(repeat):
                shift = turn % len(libraries)
                blocks.append((store, server, round_, libraries[shift:] + libraries[:shift]))
                turn += 1
    return blocks


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
        **{name: version(name) for name in ("beaker", "flask-session", "cachelib")},
        **{name: version(name) for name in ("flask-sqlalchemy", "sqlalchemy", "psycopg")},
        **{name: version(name) for name in ("pymysql", "redis", "pymemcache")},
    }


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
    """Run every library on every store and server asked for; 1 if wsgisession failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--libraries", type=lambda v: _names(v, LIBRARIES), default=list(LIBRARIES)
    )
    parser.add_argument("--stores", type=lambda v: _names(v, STORES), default=list(DEFAULT_STORES))
    parser.add_argument("--servers", type=lambda v: _names(v, SERVERS), default=list(SERVERS))
    parser.add_argument(
        "--seconds", type=_positive(float), default=10.0, help="per library, store and server"
    )
    parser.add_argument(
        "--repeat", type=_positive(int), default=3, help="rounds; the report gives medians"
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
    began = time.monotonic()
    for store_name, server, round_, order in schedule(
        args.libraries, args.stores, args.servers, args.repeat
    ):
        order = [lib for lib in order if store_name not in NOT_SERVED.get(lib, ())]
        for position, library in enumerate(order):
            print(
                f"{store_name} / {plan.describe(server)} / round {round_ + 1} / {library} ...",
                file=sys.stderr,
                flush=True,
            )
            row = measure(
                library,
                store_name,
                server,
                plan,
                args.clients,
                args.seconds,
                round_=round_,
                position=position,
            )
            if row.first_error:
                print(f"  first error: {row.first_error}", file=sys.stderr)
            rows.append(row)
    duration = time.monotonic() - began
    summaries = summarize(rows, args.libraries)
    comparisons = compare(rows, summaries)
    table = markdown(summaries)
    versus = comparison_markdown(comparisons)
    about = machine()
    setup = {
        "libraries": args.libraries,
        "clients": args.clients,
        "seconds": args.seconds,
        "repeat": args.repeat,
        "servers": {s: plan.describe(s) for s in args.servers},
        "duration_s": round(duration),
    }
    print(f"{table}\n\n{versus}")
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        versions = ", ".join(
            f"{name} {about[name]}"
            for name in ("flask", "beaker", "flask-session", "waitress", "gunicorn")
        )
        header = (
            f"Measured {about['date']} on {about['cpus']} CPUs ({about['platform']}), "
            f"Python {about['python']}, {versions}; {args.clients} clients for "
            f"{args.seconds:g} s per run, {args.repeat} round(s), the libraries in rotating "
            f"order, medians of the rounds (errors, stale reads and lost updates summed); "
            f"{'; '.join(setup['servers'].values())}; {duration / 60:.0f} min in all.\n\n"
        )
        (RESULTS / "load.md").write_text(
            f"{header}{table}\n\n## wsgisession against each peer\n\n{versus}\n"
        )
        payload = {
            "machine": about,
            "setup": setup,
            "summary": [asdict(s) for s in summaries],
            "comparison": [{**asdict(c), "met": c.met} for c in comparisons],
            "rows": [asdict(r) for r in rows],
        }
        (RESULTS / "load.json").write_text(json.dumps(payload, indent=2) + "\n")
    for s in summaries:
        if s.library != "wsgisession" and (s.errors or s.stale_reads or s.lost_updates):
            print(
                f"{s.library} on {s.store} / {s.server}: {s.errors} errors, {s.stale_reads} "
                f"stale reads, {s.lost_updates} lost updates; first error: {s.first_error}",
                file=sys.stderr,
            )
    ours = [r for r in rows if r.library == "wsgisession"]
    return 1 if any(r.failed for r in ours) else 0


if __name__ == "__main__":
    sys.exit(main())

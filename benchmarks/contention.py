"""Contention run: many clients writing one session at once, through a threaded server.

Run it by hand, from the repository root (it is never part of the test suite)::

    python benchmarks/contention.py [--stores memory,file,...]
                                    [--shapes 16x30,64x10,hot16x30] [--runs 5] [--src DIR]

For each store and shape ``WxN``, a waitress server of ``W`` threads is started in its
own process, serving a handler that adds one to the key ``?k=`` names, as a
read-modify-write (``s[k] = s.get(k, 0) + 1``). One session is made, then ``W`` client
threads, each on its own connection, send ``N`` requests that increment a key of
their own. Every request must answer 200 and every key must end at ``N``: a failed
request or a key short of ``N`` is a lost write. A shape ``hotWxN`` has every request
increment one shared key with ``s.incr`` instead, which must end at ``W * N``.
Reported per store and shape, over all runs: failed requests, lost writes, the
client's p50 and p99 request time, and the saves that fell back on the session's
lock (``metrics()["locked_saves"]``).

``--src`` serves another checkout's ``src`` directory (say, a ``git worktree`` of an
older commit), so a before-and-after comparison runs the same clients. Server stores
are found as the tests find them (``WSGISESSION_TEST_*_URL``, else loopback), each run
on a fresh table or key prefix, removed afterwards; Redis Cluster runs on three
``redis-server`` processes started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STORES = (
    "memory",
    "file",
    "sqlite",
    "postgresql",
    "mariadb",
    "redis",
    "redis-cluster",
)
SERVER_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mariadb+pymysql://root@127.0.0.1:3306/test",
    "redis": "redis://127.0.0.1:6379/0",
}

# The server process: the handler, the middleware and waitress; prints its port.
SERVER = """
import json, sys
from waitress.server import create_server
from werkzeug.wrappers import Request, Response
from wsgisession import SessionMiddleware

url, options, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])

def app(environ, start_response):
    request, session = Request(environ), environ["session"]
    if request.path == "/incr":
        key = request.args["k"]
        session[key] = session.get(key, 0) + 1
        body = session[key]
    elif request.path == "/hot":
        body = session.incr("hot")
    elif request.path == "/metrics":
        body = middleware.metrics()
    else:
        body = dict(session)
    return Response(json.dumps(body), mimetype="application/json")(environ, start_response)

middleware = SessionMiddleware(
    app, secret_key="contention-" * 4, store=url, store_options=options, cleanup_interval=0
)
server = create_server(middleware, host="127.0.0.1", port=0, threads=threads,
                       connection_limit=threads * 8)
print(server.effective_port, flush=True)
server.run()
"""


def _store(kind: str, scratch: Path, cluster: str | None) -> tuple[str, dict[str, Any]]:
    token = uuid.uuid4().hex[:10]
    if kind == "memory":
        return "memory://", {}
    if kind == "file":
        return f"file:{scratch / token}", {}
    if kind == "sqlite":
        return f"sqlite:///{scratch / token}.db", {}
    if kind == "redis-cluster":
        assert cluster is not None
        return cluster, {"key_prefix": f"contention:{token}:"}
    url = os.environ.get(f"WSGISESSION_TEST_{kind.upper()}_URL", SERVER_URLS[kind])
    if kind == "redis":
        return url, {"key_prefix": f"contention:{token}:"}
    return url, {"table_name": f"contention_{token}"}


def _drop(kind: str, url: str, options: dict[str, Any]) -> None:
    """Remove the table or keys a run made on a shared server."""
    sys.path.insert(0, str(ROOT / "src"))
    from wsgisession.stores import open_store

    if kind in ("postgresql", "mariadb"):
        store = open_store(url, **options)
        store.table.drop(store.engine, checkfirst=True)  # type: ignore[attr-defined]
        store.close()
    elif kind.startswith("redis"):
        store = open_store(url, **options)
        client = store.client  # type: ignore[attr-defined]
        for key in list(client.scan_iter(match=options["key_prefix"] + "*")):
            client.delete(key)
        store.close()


@contextlib.contextmanager
def _server(src: Path, url: str, options: dict[str, Any], threads: int) -> Iterator[int]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, url, json.dumps(options), str(threads)],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the server for {url} did not start")
        yield int(line)
    finally:
        process.terminate()
        process.wait(10)


def _get(connection: http.client.HTTPConnection, path: str, cookie: str | None) -> Any:
    headers = {"Cookie": f"session_id={cookie}"} if cookie else {}
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    payload = response.read()
    return response, payload


def run_once(port: int, writers: int, each: int, hot: bool) -> dict[str, Any]:
    """One run of *writers* threads x *each* increments on one session; with *hot*,
    all of one key."""
    first = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    response, _ = _get(first, "/incr?k=start", None)
    cookie = response.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]
    times: list[float] = []
    failed: list[int] = []
    barrier = threading.Barrier(writers)

    def writer(n: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        barrier.wait()
        for _ in range(each):
            start = time.perf_counter()
            try:
                response, _ = _get(connection, "/hot" if hot else f"/incr?k=t{n}", cookie)
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            times.append(time.perf_counter() - start)
            if status != 200:
                failed.append(status)
        connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _, payload = _get(first, "/", cookie)
    final = json.loads(payload)
    _, payload = _get(first, "/metrics", cookie)
    metrics = json.loads(payload)
    first.close()
    if hot:
        lost = writers * each - final.get("hot", 0)
    else:
        lost = sum(max(0, each - final.get(f"t{n}", 0)) for n in range(writers))
    return {"times": times, "failed": len(failed), "lost": lost, "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--shapes", default="16x30,64x10,hot16x30")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    args = parser.parse_args(argv)
    kinds = [kind for kind in args.stores.split(",") if kind]
    shapes = [
        (shape.startswith("hot"), *(int(n) for n in shape.removeprefix("hot").split("x")))
        for shape in args.shapes.split(",")
    ]
    print(f"src: {args.src}; {args.runs} runs per store and shape\n")
    print("| store | shape | failed | lost writes | p50 ms | p99 ms | locked saves |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        cluster = None
        if "redis-cluster" in kinds:
            sys.path.insert(0, str(ROOT))
            from tests.redis_servers import redis_cluster

            cluster = stack.enter_context(redis_cluster(Path(scratch) / "cluster"))
        for kind in kinds:
            for hot, writers, each in shapes:
                results = []
                for _ in range(args.runs):
                    url, options = _store(kind, Path(scratch), cluster)
                    try:
                        with _server(args.src, url, options, writers) as port:
                            results.append(run_once(port, writers, each, hot))
                    finally:
                        _drop(kind, url, options)
                times = sorted(t for r in results for t in r["times"])
                p50 = statistics.median(times) * 1000
                p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
                failed = sum(r["failed"] for r in results)
                lost = sum(r["lost"] for r in results)
                locked = sum(r["metrics"].get("locked_saves", 0) for r in results)
                total = writers * each * args.runs
                print(
                    f"| {kind} | {'hot' if hot else ''}{writers}x{each} | {failed} of {total} | "
                    f"{lost} | "
                    f"{p50:.1f} | {p99:.1f} | {locked} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Private Redis servers for the tests, started on free loopback ports.

``redis_sentinel_url`` (one master watched by one Sentinel) and ``redis_cluster_url``
(three masters) live for the whole run; ``private_redis`` is a standalone server,
persisted with an append-only file, that a test may stop and start again on the
same port. Every process is stopped at the end. If ``redis-server`` cannot be
started, the tests that need it are skipped, or fail when
``WSGISESSION_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

from tests.helpers import free_ports, unreachable

_START_TIMEOUT = 15.0
_CLUSTER_TIMEOUT = 30.0
_CLUSTER_ARGS = (
    "--appendonly",
    "no",
    "--cluster-enabled",
    "yes",
    "--cluster-node-timeout",
    "2000",
)


class ServerUnavailable(Exception):
    """A Redis process could not be started or did not become ready in time."""


def _wait_for(what: str, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if ready():
                return
        time.sleep(0.05)
    raise ServerUnavailable(f"{what} was not ready after {timeout:.0f}s")


class RedisServer:
    """One ``redis-server`` process on a fixed port, with its data in *directory*.

    :meth:`stop` and :meth:`start` may be called again and again; the port and the
    directory stay the same, so an append-only file carries data across restarts.
    """

    def __init__(self, directory: Path, port: int, *args: str, sentinel: bool = False) -> None:
        self.directory = directory
        self.port = port
        self.args = args
        self.sentinel = sentinel
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def log(self) -> Path:
        """The file that receives the server's output."""
        return self.directory / f"redis-{self.port}.log"

    def start(self) -> None:
        """Start the server and wait until it answers ``PING``.

        :raises ServerUnavailable: It could not be started or never answered.
        """
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerUnavailable("redis-server is not installed")
        if self.sentinel:
            conf = self.directory / f"sentinel-{self.port}.conf"
            command = [binary, str(conf), "--sentinel"]
        else:
            command = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            command += ["--dir", str(self.directory), "--save", "", *self.args]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            _wait_for(f"redis-server on port {self.port}", self._answers, _START_TIMEOUT)
        except ServerUnavailable as exc:
            self.stop()
            tail = self.log.read_text(errors="replace")[-600:]
            raise ServerUnavailable(f"{exc}; its log ends with:\n{tail}") from None

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise ServerUnavailable(f"redis-server exited with {self._process.returncode}")
        with self.client() as client:
            return bool(client.ping())

    def stop(self) -> None:
        """Stop the server (SIGTERM, which flushes the append-only file) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def client(self) -> redis.Redis:
        """A new client of this server; close it after use."""
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)


@contextlib.contextmanager
def _servers() -> Iterator[list[RedisServer]]:
    started: list[RedisServer] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def redis_sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Sentinel-managed master started for this test run."""
    directory = tmp_path_factory.mktemp("redis-sentinel")
    master_port, sentinel_port = free_ports(2)
    url = f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0"
    with _servers() as started:
        try:
            for server in (
                RedisServer(directory, master_port, "--appendonly", "no"),
                sentinel_of(directory, sentinel_port, master_port, down_after_ms=5000),
            ):
                started.append(server)
                server.start()
            _wait_for("the sentinel's master", lambda: _sentinel_sees_master(sentinel_port), 20)
        except ServerUnavailable as exc:
            unreachable(url, exc)
        yield url


def sentinel_of(
    directory: Path,
    port: int,
    master_port: int,
    *,
    down_after_ms: int,
    failover_timeout_ms: int | None = None,
) -> RedisServer:
    """A Sentinel on *port* watching the master on *master_port* as ``mymaster``, its
    configuration written into *directory* (not started)."""
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f"dir {directory}",
        f"sentinel monitor mymaster 127.0.0.1 {master_port} 1",
        f"sentinel down-after-milliseconds mymaster {down_after_ms}",
    ]
    if failover_timeout_ms is not None:
        lines.append(f"sentinel failover-timeout mymaster {failover_timeout_ms}")
    (directory / f"sentinel-{port}.conf").write_text("\n".join(lines) + "\n")
    return RedisServer(directory, port, sentinel=True)


def _sentinel_sees_master(port: int) -> bool:
    sentinel = Sentinel([("127.0.0.1", port)], socket_timeout=2)
    try:
        return bool(sentinel.discover_master("mymaster"))
    finally:
        sentinel.close()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a three-master Redis Cluster started for this test run."""
    directory = tmp_path_factory.mktemp("redis-cluster")
    try:
        with redis_cluster(directory) as url:
            yield url
    except ServerUnavailable as exc:
        unreachable("redis+cluster://127.0.0.1", exc)


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[str]:
    """Run a three-master Redis Cluster in *directory*; yield its URL, stop it after.

    :raises ServerUnavailable: It could not be started.
    """
    ports = free_ports(6)
    nodes, buses = ports[:3], ports[3:]
    with _servers() as started:
        for port, bus in zip(nodes, buses, strict=True):
            server = RedisServer(
                directory / str(port),
                port,
                *_CLUSTER_ARGS,
                *("--cluster-config-file", str(directory / f"nodes-{port}.conf")),
                # The default bus port, port + 10000, may be taken or out of range.
                *("--cluster-port", str(bus)),
            )
            started.append(server)
            server.start()
        _create_cluster(nodes)
        for server in started:
            _wait_for(
                f"cluster node {server.port}",
                functools.partial(_cluster_ok, server),
                _CLUSTER_TIMEOUT,
            )
        yield f"redis+cluster://127.0.0.1:{nodes[0]},127.0.0.1:{nodes[1]}"


def _create_cluster(ports: list[int]) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise ServerUnavailable("redis-cli is not installed, so no cluster can be created")
    command = [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
    command += ["--cluster-replicas", "0", "--cluster-yes"]
    try:
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=_CLUSTER_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        raise ServerUnavailable("redis-cli --cluster create did not finish") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")[-600:]
        raise ServerUnavailable(f"redis-cli --cluster create failed:\n{output}")


def _cluster_ok(server: RedisServer) -> bool:
    with server.client() as client:
        info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and "cluster_known_nodes:3" in text


@contextlib.contextmanager
def running(server: RedisServer) -> Iterator[RedisServer]:
    """Start *server* (skipping or failing the test if it can't), and stop it after."""
    try:
        server.start()
    except ServerUnavailable as exc:
        unreachable(server.url, exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A standalone server of this test alone, persisted with an append-only file.

    The test may :meth:`~RedisServer.stop` it and :meth:`~RedisServer.start` it
    again; it comes back on the same port with the same data.
    """
    server = RedisServer(tmp_path / "redis", free_ports(1)[0], "--appendonly", "yes")
    with running(server):
        yield server

"""Private memcached servers for the tests, started on free loopback ports.

``memcached_url`` is the server the ``store`` fixture's ``memcached`` kind runs on,
for the whole run: started with a 2 MB item limit (``-I 2m``), as the conformance
suite writes a record of 1 MiB of data, which memcached's default limit of 1 MB
refuses; ``WSGISESSION_TEST_MEMCACHED_URL`` points it at a server of your own
instead. ``private_memcached`` is a server of one test alone, which it may kill and
start again; ``memcached_pair`` two servers, for a store over both. Every process is
stopped at the end. If ``memcached`` cannot be started, the tests that need it are
skipped, or fail when ``WSGISESSION_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.helpers import unreachable
from tests.redis_servers import ServerUnavailable, free_ports

_START_TIMEOUT = 15.0


class MemcachedServer:
    """One ``memcached`` process on a fixed port; :meth:`kill` and :meth:`start` it
    again and again, on the same port (memcached keeps nothing across a restart)."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.args = args
        self.url = f"memcached://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers ``version``.

        :raises ServerUnavailable: It could not be started or never answered.
        """
        binary = shutil.which("memcached") or "/usr/bin/memcached"
        if not os.path.exists(binary):
            raise ServerUnavailable("memcached is not installed")
        command = [binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", *self.args]
        if os.geteuid() == 0:
            command += ["-u", "root"]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise ServerUnavailable(f"memcached exited at start with status {code}")
            if self.answers():
                return
            time.sleep(0.02)
        self.kill()
        raise ServerUnavailable(f"memcached on port {self.port} did not answer")

    def answers(self) -> bool:
        """Whether the server answers ``version`` right now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"version\r\n")
                return sock.recv(64).startswith(b"VERSION")
        except OSError:
            return False

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would, and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()


def started(*args: str) -> MemcachedServer:
    """A memcached started with *args* on a free port (the test skips, or fails when
    services are required, if it can't be); kill it after use."""
    server = MemcachedServer(free_ports(1)[0], *args)
    try:
        server.start()
    except ServerUnavailable as exc:
        unreachable(server.url, exc)
    return server


@pytest.fixture(scope="session")
def memcached_url() -> Iterator[str]:
    """URL of the memcached the ``memcached`` store kind runs on."""
    url = os.environ.get("WSGISESSION_TEST_MEMCACHED_URL")
    if url:
        yield url
        return
    server = started("-I", "2m", "-m", "256")
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture
def private_memcached() -> Iterator[MemcachedServer]:
    """A memcached of this test alone, with the default 1 MB item limit."""
    server = started()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def memcached_pair() -> Iterator[list[MemcachedServer]]:
    """Two memcached servers of this test alone."""
    first = started()
    try:
        second = started()
    except BaseException:
        first.kill()
        raise
    try:
        yield [first, second]
    finally:
        first.kill()
        second.kill()

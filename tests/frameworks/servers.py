"""Real WSGI servers on loopback for the framework tests, and a small HTTP client.

Each server is a subprocess (waitress or gunicorn) serving a small entry module the
test writes next to its file store, in its own process group so teardown stops it
and every worker it forked. The client speaks plain HTTP with a cookie jar of its
own and follows no redirect by itself, so a test sees each ``Set-Cookie``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.cookies import Morsel, SimpleCookie
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: The servers every framework runs under.
SERVERS = ["waitress", "gunicorn"]

SECRET = "framework-tests-secret-long-enough-for-a-key"
#: Not the default, so a test can tell the option reached the middleware.
REMEMBER_ME_TIMEOUT = 1209600
#: The per-key timeout of the examples' "Welcome" flash, in seconds.
FLASH_SECONDS = 60
#: How long a server may take to start.
START_SECONDS = 30.0
#: The served module's clock: ``wsgisession._clock.now`` plus the offset in this file.
CLOCK_OFFSET_FILE = "clock-offset"


@dataclass
class Server:
    """A server process listening on ``url``; its output goes to ``log``."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    directory: Path

    def advance_clock(self, seconds: float) -> None:
        """Move the served application's clock *seconds* forward, as the ``clock``
        fixture does in the test process (the entry module reads the offset)."""
        path = self.directory / CLOCK_OFFSET_FILE
        offset = float(path.read_text()) if path.exists() else 0.0
        written = path.with_name(path.name + ".new")
        written.write_text(repr(offset + seconds))
        written.replace(path)  # atomically: a worker never reads half a number


def free_port() -> int:
    """A TCP port nobody listens on at the moment, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_command(kind: str, target: str, port: int, directory: Path) -> list[str]:
    """The command line serving the WSGI app *target* (``module:name``) with *kind*."""
    if kind == "waitress":
        # waitress-serve puts its working directory on sys.path.
        return [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", target]
    if kind == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            f"--bind=127.0.0.1:{port}",
            "--workers=2",
            "--graceful-timeout=2",
            f"--chdir={directory}",
            target,
        ]
    raise ValueError(f"unknown server {kind!r}")


@contextlib.contextmanager
def run_server(
    command: list[str], port: int, directory: Path, env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """Start *command* in *directory*, wait until it listens on *port*, stop it after."""
    log = directory / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=directory,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log, directory)
    try:
        _wait_until_listening(server, port)
        yield server
    finally:
        _stop(process)


def _wait_until_listening(server: Server, port: int) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{_tail(server.log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"server not listening after {START_SECONDS}s:\n{_tail(server.log)}")
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    # The server is its own process group: a gunicorn master and its workers go together.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    # Workers left behind by a master that died first.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def serve_example(
    kind: str, example: str, directory: Path, *, wsgi: str = "", **options: object
) -> contextlib.AbstractContextManager[Server]:
    """Serve ``examples/<example>.py``'s ``create_app(...)<wsgi>`` with *kind*.

    The app gets a file store in *directory*, no purge thread, the tests'
    ``remember_me_timeout``, and *options*; ``FLASH_SECONDS`` is set for it, and its
    clock is the one :meth:`Server.advance_clock` moves.
    """
    settings = {
        "secret_key": SECRET,
        "store": f"file:{directory / 'sessions'}",
        "cleanup_interval": 0,
        "remember_me_timeout": REMEMBER_ME_TIMEOUT,
        **options,
    }
    source = (
        "import pathlib, sys, time\n"
        "import wsgisession._clock\n"
        f"_offset = pathlib.Path(__file__).with_name({CLOCK_OFFSET_FILE!r})\n"
        "wsgisession._clock.now = lambda: time.time() + (\n"
        "    float(_offset.read_text()) if _offset.exists() else 0.0\n"
        ")\n"
        f"sys.path.insert(0, {str(EXAMPLES)!r})\n"
        f"import {example}\n"
        f"application = {example}.create_app(**{settings!r}){wsgi}\n"
    )
    return serve_module(kind, directory, source, env={"FLASH_SECONDS": str(FLASH_SECONDS)})


def serve_module(
    kind: str, directory: Path, source: str, env: Mapping[str, str] | None = None
) -> contextlib.AbstractContextManager[Server]:
    """Serve ``application`` of a module made of *source*, written to *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "wsgi_entry.py").write_text(source)
    port = free_port()
    command = server_command(kind, "wsgi_entry:application", port, directory)
    return run_server(command, port, directory, env)


def run_example(example: str, directory: Path) -> contextlib.AbstractContextManager[Server]:
    """Run ``python examples/<example>.py`` in *directory*, as the README says, on a free port."""
    port = free_port()
    command = [sys.executable, str(EXAMPLES / f"{example}.py")]
    return run_server(command, port, directory, env={"PORT": str(port)})


def check_example_counts(server: Server) -> None:
    """The example counts visits and keeps them in the default file store, ``./sessions``."""
    browser = Browser(server.url)
    for expected in (1, 2):
        response = browser.get("/")
        assert response.status == 200, response.body[:300]
        assert f'id="count">{expected}<' in response.body
    assert any((server.directory / "sessions").rglob("*")), "the default file store was not used"


@dataclass
class Response:
    """One HTTP response, its body decoded."""

    status: int
    headers: list[tuple[str, str]]
    body: str

    def header(self, name: str) -> str | None:
        """The first header called *name*, or ``None``."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def set_cookie(self, name: str) -> Morsel[str] | None:
        """The ``Set-Cookie`` of cookie *name*, parsed, or ``None``."""
        for key, value in self.headers:
            if key.lower() == "set-cookie":
                jar: SimpleCookie = SimpleCookie()
                jar.load(value)
                if name in jar:
                    return jar[name]
        return None


@dataclass
class Browser:
    """An HTTP client with a cookie jar: enough of a browser for the flows."""

    url: str
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: Mapping[str, str] | None = None) -> Response:
        """Send one request and keep the cookies of the response."""
        parsed = urllib.parse.urlsplit(self.url)
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=body, headers=headers)
            raw = connection.getresponse()
            response = Response(raw.status, raw.getheaders(), raw.read().decode())
        finally:
            connection.close()
        for key, value in response.headers:
            if key.lower() == "set-cookie":
                self._keep(value)
        return response

    def _keep(self, header: str) -> None:
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            if morsel["max-age"] == "0":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = morsel.value

    def get(self, path: str) -> Response:
        """GET *path*."""
        return self.request("GET", path)

    def post(self, path: str, form: Mapping[str, str] | None = None) -> Response:
        """POST *form* to *path*, urlencoded."""
        return self.request("POST", path, form or {})

"""The clients of ``load.py``: users with a cookie each, checking every answer they get.

Every client is a thread with its own cookie, and so its own session. Each request
changes one of the client's keys (or the demo's counter) and reads the session back;
the answer must equal what the client has written so far, exactly. Connections are
dropped every few requests, so under gunicorn a session moves between processes. When
the time is up, each client reads its session once more: a key whose value is not the
last one written is a lost update.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

# Every client's keys; a request changes one of them or the demo's counter.
KEYS = ("a", "b", "c", "d")
# Requests on one connection before the client drops it and opens another.
RECONNECT_EVERY = 8
START_TIMEOUT = 30.0


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
    #: The session cookie the client held at the end.
    cookie: str | None = None


class Client:
    """One user: its own cookie (so its own session) and what it has written so far."""

    def __init__(self, number: int, address: tuple[str, int], cookie_name: str) -> None:
        self.number = number
        self.address = address
        self.cookie_name = cookie_name
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
        headers = {} if self.cookie is None else {"Cookie": f"{self.cookie_name}={self.cookie}"}
        try:
            self._conn.request("GET", path, headers=headers)
            with self._conn.getresponse() as response:
                body = response.read().decode()
                for header in response.headers.get_all("Set-Cookie") or []:
                    name, _, value = header.split(";", 1)[0].partition("=")
                    if name.strip() == self.cookie_name:
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
    address: tuple[str, int], cookie_name: str, clients: int, seconds: float
) -> tuple[list[ClientResult], float]:
    """Run *clients* clients against *address* for *seconds*; return what each saw.

    Each client first starts its session (and its counter) untimed; then all go at
    once until the time is up, and each checks its session at the end.
    """
    team = [Client(n, address, cookie_name) for n in range(clients)]
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
            client.result.cookie = client.cookie

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

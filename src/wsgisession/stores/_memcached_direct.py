"""Sending the request path's commands on connections the memcached store keeps open.

pymemcache wraps every command in layers the request path doesn't need: checking a
client out of the pool and back in (a lock and a context manager each time), checking
each key and argument again, and reading the reply a line at a time through helpers.
On the benchmark machine that came to about a quarter of a loopback ``gets``.
:class:`Held` keeps one of the pool's clients for each thread that sends the store's
``gets``, ``add`` and ``cas`` of the request path, and speaks memcached's text
protocol on its socket itself: the same commands and replies, and the same pymemcache
errors for a refusal, a failure or a timeout.

A thread's client goes back to the pool when the thread ends, for the next thread to
take, and when the store is closed, once the command under way on it is done. A
command a thread sends while its own is under way (from a signal handler, say) goes
through the pool as before. A client not connected yet (new, or closed after a
failure) sends its command through pymemcache, which connects it. A command that
fails in any way, or whose reply is not exactly what the protocol says, closes the
client's socket, so that no reply can be read as another command's. A connection that
has sat idle for a second is looked at first, without waiting: if the server closed it
(a restart, its idle timeout), it is dialled again instead of failing the request.

The clients count against the pool while their threads live, which is why the store
holds them only on a pool it made itself, with no ``max_pool_size`` and no
``pool_idle_timeout``. A forked child never touches its parent's clients or locks; it
starts afresh.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn, TypeVar

from pymemcache.client.base import PooledClient
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)

from ._held import PerThread

__all__ = ["Held"]

_T = TypeVar("_T")

# Bytes asked of the socket at a time, or what is left of a value, if more.
_CHUNK: Final = 65_536
# The longest key memcached takes, in bytes.
_LONGEST_KEY: Final = 250
# select() takes no descriptor past 1023, which a busy server's sockets pass: poll()
# where the platform has it.
_poll: Final = getattr(select, "poll", None)
_ADD_REPLIES: Final[Mapping[bytes, bool]] = {b"STORED": True, b"NOT_STORED": False}
_CAS_REPLIES: Final[Mapping[bytes, bool | None]] = {
    b"STORED": True,
    b"EXISTS": False,
    b"NOT_FOUND": None,
}


class Held:
    """Sends ``gets``, ``add`` and ``cas`` on clients kept out of *client*'s pool, one
    per thread; each method takes and returns what pymemcache's of that name does.

    :param client: A pymemcache ``PooledClient`` that the store made, with its default
        serializer (values are bytes, their flags 0).
    """

    __slots__ = ("_client", "_pool", "_threads")

    def __init__(self, client: PooledClient) -> None:
        self._client = client
        self._pool = client.client_pool
        self._threads = PerThread(self._pool.release)

    def gets_many(self, keys: list[str]) -> dict[str, tuple[bytes, bytes]]:
        """Return each of *keys* that the server holds, as ``(value, cas token)``.

        :raises MemcacheError: The server refused the command or failed.
        :raises OSError: The connection failed or timed out.
        """
        names = [name for name in map(_encoded, keys) if name is not None]
        if len(names) != len(keys) or not names:
            # pymemcache refuses a bad key, naming it, and asks nothing for no key.
            found: dict[str, tuple[bytes, bytes]] = self._client.gets_many(keys)
            return found
        command = b"gets " + b" ".join(names) + b"\r\n"
        return self._call(
            lambda sock: _fetch(sock, command), lambda client: client.gets_many(keys)
        )

    def add(self, key: str, value: bytes, expire: int = 0, noreply: bool = False) -> bool:
        """Store *value* under *key* unless it holds one; ``False`` if it did."""
        name = _encoded(key)
        if name is None or noreply or type(value) is not bytes or type(expire) is not int:
            return bool(self._client.add(key, value, expire=expire, noreply=noreply))
        head = b"add %s 0 %d %d\r\n" % (name, expire, len(value))
        stored = self._call(
            lambda sock: _store(sock, b"add", head, value, _ADD_REPLIES),
            lambda client: client.add(key, value, expire=expire, noreply=False),
        )
        return bool(stored)

    def cas(
        self, key: str, value: bytes, cas: bytes, expire: int = 0, noreply: bool = False
    ) -> bool | None:
        """Store *value* under *key* if its cas token is still *cas*: ``True`` if stored,
        ``False`` if the value changed since, ``None`` if there is none."""
        name = _encoded(key)
        if (
            name is None
            or noreply
            or type(value) is not bytes
            or type(expire) is not int
            or not (type(cas) is bytes and cas.isdigit())
        ):
            stored: bool | None = self._client.cas(key, value, cas, expire=expire, noreply=noreply)
            return stored
        head = b"cas %s 0 %d %d %s\r\n" % (name, expire, len(value), cas)
        result: bool | None = self._call(
            lambda sock: _store(sock, b"cas", head, value, _CAS_REPLIES),
            lambda client: client.cas(key, value, cas, expire=expire, noreply=False),
        )
        return result

    def _call(self, send: Callable[[Any], _T], through: Callable[[Any], _T]) -> _T:
        """``send(socket)`` on this thread's client's socket; ``through(client)`` with
        the client while it is not connected, or with the pool's while the thread is
        already sending one."""
        slot = self._threads.slot()
        lock = slot.lock
        if not lock.acquire(blocking=False):
            return through(self._client)
        try:
            client = slot.connection
            if client is None:
                client = slot.connection = self._pool.get()
            sock = client.sock
            if sock is not None and slot.idle() and _closed(sock):
                client.close()
                sock = None
            try:
                if sock is None:
                    return through(client)  # which connects it
                return send(sock)
            except BaseException:
                # Whatever is left of the reply must never be read as the next one's.
                client.close()
                raise
            finally:
                slot.used = time.monotonic()
        finally:
            lock.release()

    def release(self) -> None:
        """Give every thread's client back to the pool, each once its command is done;
        a thread's next command takes another."""
        self._threads.release()


def _encoded(key: str) -> bytes | None:
    """*key* as the command carries it, or ``None`` for a key pymemcache should judge
    (and refuse): too long, not ASCII, or holding a space or a control character."""
    if len(key) > _LONGEST_KEY or not key.isascii() or not key.isprintable() or " " in key:
        return None
    return key.encode("ascii")


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed *sock*, as far as a look without waiting tells: an
    idle connection has nothing to read, so anything there (the end of the stream, or
    bytes no command asked for) means it can't be used. Only a plain socket is looked
    at; on a TLS one a record the server sends unasked is no sign of anything."""
    if type(sock) is not socket.socket:
        return False
    try:
        if _poll is None:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable)
        poller = _poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _more(sock: Any, want: int) -> bytes:
    chunk: bytes = sock.recv(max(want, _CHUNK))
    if not chunk:
        raise MemcacheUnexpectedCloseError()
    return chunk


def _fetch(sock: Any, command: bytes) -> dict[str, tuple[bytes, bytes]]:
    """Send a ``gets`` and read its values up to ``END``."""
    sock.sendall(command)
    buf = _more(sock, 0)
    found: dict[str, tuple[bytes, bytes]] = {}
    at = 0
    while True:
        end = buf.find(b"\r\n", at)
        while end < 0:
            buf += _more(sock, 0)
            end = buf.find(b"\r\n", at)
        line = buf[at:end]
        if line == b"END":
            if end + 2 != len(buf):
                raise MemcacheUnknownError(b"bytes after END: " + buf[end + 2 : end + 34])
            return found
        head = line.split()
        if len(head) != 5 or head[0] != b"VALUE" or not head[3].isdigit():
            _refused(line, b"gets")
        start = end + 2
        stop = start + int(head[3])
        if len(buf) < stop + 2:
            chunks = [buf]
            have = len(buf)
            while have < stop + 2:
                chunk = _more(sock, stop + 2 - have)
                chunks.append(chunk)
                have += len(chunk)
            buf = b"".join(chunks)
        if buf[stop : stop + 2] != b"\r\n":
            raise MemcacheUnknownError(b"a value longer than its VALUE line said")
        found[head[1].decode("ascii")] = (buf[start:stop], head[4])
        at = stop + 2


def _store(sock: Any, name: bytes, head: bytes, value: bytes, replies: Mapping[bytes, _T]) -> _T:
    """Send a storage command and return what its one-line reply means."""
    sock.sendall(b"".join((head, value, b"\r\n")))
    buf = _more(sock, 0)
    while not buf.endswith(b"\r\n"):
        buf += _more(sock, 0)
    line = buf[:-2]
    if b"\r\n" in line:
        raise MemcacheUnknownError(b"more than one reply: " + line[:32])
    if line not in replies:
        _refused(line, name)
    return replies[line]


def _refused(line: bytes, name: bytes) -> NoReturn:
    """Raise pymemcache's error for the reply *line* to command *name*."""
    if line.startswith(b"ERROR"):
        raise MemcacheUnknownCommandError(name)
    if line.startswith(b"CLIENT_ERROR"):
        raise MemcacheClientError(line[line.find(b" ") + 1 :])
    if line.startswith(b"SERVER_ERROR"):
        raise MemcacheServerError(line[line.find(b" ") + 1 :])
    raise MemcacheUnknownError(line[:32])

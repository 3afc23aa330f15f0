"""Sending the request path's commands on a connection the Redis store keeps open.

redis-py's client wraps every command in layers the request path doesn't need:
checking a connection out of the pool (which first looks for stray bytes on its
socket: three system calls), the retry, observability hooks, argument parsing for
rarely used commands, and checking the connection back in. On the benchmark machine
that came to about 45 µs a command, a third of a loopback ``GET``. :class:`Held`
keeps a connection checked out of the client's own pool for each thread that sends
the store's ``GET``, ``SET`` and ``EVALSHA`` of the request path (and the pipeline of a
staged save), and sends each command on it under the connection's own retry, as the
client does: the same reconnection on a dropped connection, the same errors.

A thread's connection goes back to the pool when the thread ends, for the next thread
to take, and when the store is closed, once the command under way on it is done. A
command a thread sends while its own is under way (from a signal handler, say) goes
through the client, and so does every command while redis-py's observability is on
(its metrics would miss ours). The connections count against the pool's
``max_connections`` while their threads live, which is why the store holds them only
on a pool it made itself and no ``max_connections`` was asked of. A command
interrupted by anything but an error reply (a timeout raised into the thread, a
lost connection) closes the connection and gives it back, so no reply can be read
as another command's, and the thread's next command checks one out through the pool,
which connects it as the client would (to the master a Sentinel names now). What the
pool checks on every connection it hands out (a socket the server or a proxy closed,
stray bytes, pending maintenance notices) is checked once the connection has sat idle
for a second, so a closed one costs no retry; a connection on a master other than the
one a Sentinel last named is given back too. A forked child never touches its
parent's connections or locks; it starts afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, TypeGuard

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import SentinelConnectionPool

from ._held import PerThread, Slot

try:
    from redis.observability.providers import get_observability_instance
except ImportError:  # redis-py before 7: no observability to keep informed

    def _observed() -> bool:
        return False

else:

    def _observed() -> bool:
        return get_observability_instance().is_enabled()


__all__ = ["Held", "pipelined"]

_PLAIN_POOLS: Final = (redis.ConnectionPool, SentinelConnectionPool)


class Held:
    """Sends commands on connections kept out of *client*'s pool, one per thread.

    :param client: The store's standalone or Sentinel client.
    """

    __slots__ = ("_client", "_pool", "_sentinel", "_threads")

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pool = client.connection_pool
        # A Sentinel's pool, whose connections may be left on a demoted master.
        pool = self._pool
        self._sentinel = pool if isinstance(pool, SentinelConnectionPool) else None
        self._threads = PerThread(pool.release)

    @staticmethod
    def suits(client: object) -> TypeGuard[redis.Redis]:
        """Whether *client*'s commands can go on a held connection: a plain
        :class:`redis.Redis` (standalone or a Sentinel master's) on a plain pool, with
        no client-side cache and no single connection of its own."""
        if type(client) is not redis.Redis:
            return False
        return (
            type(client.connection_pool) in _PLAIN_POOLS
            and client.connection is None
            and client.get_cache() is None
        )

    def execute(self, *args: Any) -> Any:
        """Send the command *args* and return the server's reply as it came.

        :raises redis.RedisError: As the client's ``execute_command`` would raise it.
        """
        client = self._client
        return self._call(
            lambda connection: _send(connection, args),
            lambda: client.execute_command(*args),  # type: ignore[no-untyped-call,unused-ignore]
        )

    def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send *commands* at once and return their replies, in order, as they came: an
        error reply as its :exc:`~redis.ResponseError`, in its place, as a
        non-transactional pipeline's ``execute(raise_on_error=False)`` gives it.

        :raises redis.RedisError: Anything but an error reply, as the pipeline would.
        """
        client = self._client
        replies: list[Any] = self._call(
            lambda connection: _send_all(connection, commands),
            lambda: pipelined(client, commands),
        )
        return replies

    def _call(self, send: Callable[[Any], Any], through_client: Callable[[], Any]) -> Any:
        """``send(connection)`` on this thread's connection, or *through_client* while
        the thread is already sending one or redis-py's observability is on."""
        slot = self._threads.slot()
        lock = slot.lock
        if _observed() or not lock.acquire(blocking=False):
            return through_client()
        try:
            connection = self._ready(slot)
            try:
                return connection.retry.call_with_retry(
                    lambda: send(connection), lambda _error: connection.disconnect()
                )
            except ResponseError:
                raise  # the reply was read whole: the connection is fine
            except BaseException:
                self._drop(slot, connection)
                raise
            finally:
                slot.used = time.monotonic()
                if (
                    slot.connection is connection
                    and slot.reconnect is not None
                    and slot.reconnect()
                ):
                    self._drop(slot, connection)
        finally:
            lock.release()

    def _ready(self, slot: Slot) -> Any:
        """The slot's connection, checked as the pool checks one it hands out when it
        has sat idle (the server or a proxy may have closed it), or when a Sentinel has
        named another master since it connected."""
        connection = slot.connection
        if connection is None:
            connection = slot.connection = self._pool.get_connection()
            slot.reconnect = getattr(connection, "should_reconnect", None)
            return connection
        if self._sentinel is not None and _moved(self._sentinel, connection):
            self._drop(slot, connection)
            return self._ready(slot)
        if slot.idle():
            # Checked as the pool checks one it hands out: a socket the server closed,
            # stray bytes, pending maintenance notices.
            try:
                _ensure(self._pool, connection)
            except BaseException:
                self._drop(slot, connection)
                raise
        return connection

    def _drop(self, slot: Slot, connection: Any) -> None:
        """Close *connection* and give it back: the slot's next command checks one out
        through the pool, which connects it as the client would (to the master a
        Sentinel names now, say)."""
        connection.disconnect()
        slot.give_back()

    def release(self) -> None:
        """Give every thread's connection back to the pool, each once its command is
        done; a thread's next command checks out another."""
        self._threads.release()


def _ensure(pool: Any, connection: Any) -> None:
    """Make *connection* ready as *pool* does a connection it hands out."""
    ensure = getattr(pool, "ensure_connection", None)
    if ensure is not None:
        ensure(connection)
        return
    # redis-py before ensure_connection(): what its get_connection() did.
    connection.connect()
    try:
        if connection.can_read():
            raise RedisConnectionError("Connection has data")
    except (RedisConnectionError, RedisTimeoutError, OSError):
        connection.disconnect()
        connection.connect()
        if connection.can_read():
            raise RedisConnectionError("Connection not ready") from None


def _moved(pool: SentinelConnectionPool, connection: Any) -> bool:
    """Whether the Sentinel has named a master other than the one *connection* is on."""
    master = pool.master_address
    return master is not None and master != (connection.host, connection.port)


def _send(connection: Any, args: tuple[Any, ...]) -> Any:
    connection.send_command(*args)
    return connection.read_response()


def pipelined(client: Any, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """Send *commands* through *client* in one non-transactional pipeline; return their
    replies, an error reply as its exception, in its place."""
    with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies


def _send_all(connection: Any, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
    connection.send_packed_command(connection.pack_commands(commands))
    replies: list[Any] = []
    for _ in commands:
        # Every reply is read, an error reply's included, so none is left for the next
        # command to take as its own.
        try:
            replies.append(connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies

"""Sending the request path's commands on a connection the Redis store keeps open.

redis-py's client wraps every command in layers the request path doesn't need:
checking a connection out of the pool (which first looks for stray bytes on its
socket: three system calls), the retry, observability hooks, argument parsing for
rarely used commands, and checking the connection back in. On the benchmark machine
that came to about 45 µs a command, a third of a loopback ``GET``. :class:`Held`
keeps one connection checked out of the client's own pool for the store's ``GET``,
``SET`` and ``EVALSHA`` of the request path, and sends each command on it under the
connection's own retry, as the client does: the same reconnection on a dropped
connection, the same errors.

The connection is used by one thread at a time; a thread that finds it busy goes
through the client, and so does every command while redis-py's observability is on
(its metrics would miss ours). The connection counts against the pool's
``max_connections`` while the store is open, which is why the store holds one only on
a pool it made itself and no ``max_connections`` was asked of. A command
interrupted by anything but an error reply (a timeout raised into the thread, a
lost connection) disconnects the connection, so no reply can be read as another
command's: the next command connects afresh. A forked child never touches its
parent's connection; it checks out its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Final

import redis
from redis.exceptions import ResponseError
from redis.sentinel import SentinelConnectionPool

try:
    from redis.observability.providers import get_observability_instance
except ImportError:  # redis-py before 7: no observability to keep informed

    def _observed() -> bool:
        return False

else:

    def _observed() -> bool:
        return get_observability_instance().is_enabled()


__all__ = ["Held"]

_PLAIN_POOLS: Final = (redis.ConnectionPool, SentinelConnectionPool)


class Held:
    """Sends commands on one connection kept out of *client*'s pool.

    :param client: The store's standalone or Sentinel client.
    """

    __slots__ = ("_client", "_connection", "_lock", "_pid", "_pool", "_reconnect")

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._lock = threading.Lock()
        self._connection: Any = None
        # Whether the server asked the connection to reconnect (a maintenance notice),
        # which the client checks after every command; redis-py 6 and later.
        self._reconnect: Callable[[], bool] | None = None
        self._pid = os.getpid()

    @staticmethod
    def suits(client: object) -> bool:
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
        if _observed() or not self._lock.acquire(blocking=False):
            return self._client.execute_command(*args)  # type: ignore[no-untyped-call,unused-ignore]
        try:
            connection = self._connection
            if connection is None or self._pid != os.getpid():
                connection = self._checkout()
            try:
                return connection.retry.call_with_retry(
                    lambda: _send(connection, args), lambda _error: connection.disconnect()
                )
            except ResponseError:
                raise  # the reply was read whole: the connection is fine
            except BaseException:
                connection.disconnect()
                raise
            finally:
                if self._reconnect is not None and self._reconnect():
                    connection.disconnect()  # the next command connects afresh
        finally:
            self._lock.release()

    def _checkout(self) -> Any:
        # In a forked child, the parent's connection is the parent's: left alone.
        connection = self._connection = self._pool.get_connection()
        self._reconnect = getattr(connection, "should_reconnect", None)
        self._pid = os.getpid()
        return connection

    def release(self) -> None:
        """Give the connection back to the pool; the next command checks out another."""
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None and self._pid == os.getpid():
                self._pool.release(connection)


def _send(connection: Any, args: tuple[Any, ...]) -> Any:
    connection.send_command(*args)
    return connection.read_response()

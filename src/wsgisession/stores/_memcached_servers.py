"""The memcached servers of a store: reading its URL, building its clients, and
which server holds which key.

Private to :mod:`wsgisession.stores.memcached`. Everything in :func:`plan_servers` is
checked without contacting a server, so a bad URL or option fails when the store is
built, and a server that is down fails only the first operation.

One host is served by a pymemcache ``PooledClient`` (a pool of connections, as a
threaded server needs), several by a ``HashClient`` of pooled clients. The store
never calls the ``HashClient``'s own commands: on a failed server they answer
"missing" for a while, then move its keys to another server, so that a session
could read as gone, or a logged-out session come back when the first server
returns. :class:`Servers` uses the ``HashClient``'s hasher and clients instead, so a
down server is a :exc:`~wsgisession.StoreError` for its keys and never moves them;
and it picks the server by a key's *tag*, so a session and its save lock live on
one server and one multi-get reads both. For a store built from a URL, it also keeps
a client of each server's pool per thread for the request path's commands
(:mod:`~wsgisession.stores._memcached_direct`).

Memcached reads an expiry time of more than 30 days as an absolute Unix time, by its
own clock. :meth:`Servers.exptime` gives a shorter lifetime as seconds and a longer
one as the server's time then, learned from its ``stats`` (and learned again every
few minutes), so that neither is dropped early.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pymemcache.client.base import PooledClient
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheError

from ..errors import ConfigError
from ._hosts import parse_hosts
from ._memcached_direct import Held
from .base import mask_url

__all__ = ["MAX_RELATIVE", "Plan", "Servers", "check_prefix", "plan_servers"]

#: The longest expiry memcached reads as seconds from now (30 days); longer ones
#: are absolute Unix times.
MAX_RELATIVE: Final = 30 * 86_400
# Memcached parses an expiry time as a 32-bit signed integer.
_LATEST_ABSOLUTE: Final = 2**31 - 1
# Seconds added to an expiry, so memcached, whose clock moves in whole seconds and
# lags by up to one, never drops a record before its expires_at.
_MARGIN: Final = 1
# An absolute expiry is also off by the server's clock, read to the second.
_ABSOLUTE_MARGIN: Final = 2
# How long a server's clock offset is trusted before it is read again.
_OFFSET_TTL: Final = 300.0
# A memcached key is at most 250 bytes; the store adds up to 66 to its prefix.
_LONGEST_PREFIX: Final = 184
_DEFAULT_PORT: Final = 11211


@dataclass(frozen=True)
class _Options:
    key_prefix: str = "session:"
    connect_timeout: float = 5.0
    timeout: float = 5.0
    max_pool_size: int | None = None
    pool_idle_timeout: float = 0.0
    no_delay: bool = True


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# name -> (test, what the value must be)
_CHECKS: Final[dict[str, tuple[Callable[[Any], bool], str]]] = {
    "key_prefix": (lambda v: isinstance(v, str), "a string"),
    "connect_timeout": (lambda v: _number(v) and v > 0, "a positive number of seconds"),
    "timeout": (lambda v: _number(v) and v > 0, "a positive number of seconds"),
    "max_pool_size": (
        lambda v: v is None or isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "a whole number above 0",
    ),
    "pool_idle_timeout": (lambda v: _number(v) and v >= 0, "a number of seconds, 0 or more"),
    "no_delay": (lambda v: isinstance(v, bool), "true or false"),
}


@dataclass(frozen=True)
class Plan:
    """A checked store URL: its servers, the key prefix and how to build the client."""

    key_prefix: str
    hosts: list[tuple[str, int]]
    connect: Callable[[], Any]
    #: Whether the request path may keep a connection of each pool per thread: only
    #: with no ``max_pool_size`` and no ``pool_idle_timeout`` asked of the pools.
    hold: bool = False


def plan_servers(url: str, options: Mapping[str, object]) -> Plan:
    """Check *url* and *options* and return how to build the client, contacting nothing.

    :raises ConfigError: The URL is malformed, or an option is unknown, of the wrong
        type or out of range; the message names it.
    """
    shown = mask_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "memcached":
        raise ConfigError(f"store {shown!r}: a memcached URL is memcached://host:port[,host:port]")
    opts = _read_options(shown, options)
    netloc, slash, path = rest.partition("/")
    for mark in "?#":
        if mark in netloc:
            netloc = netloc.partition(mark)[0]
            path = mark
    if "@" in netloc:
        raise ConfigError(
            f"store {shown!r}: memcached's text protocol has no user or password; "
            "remove them from the URL"
        )
    if path.strip("/") or (slash and path):
        raise ConfigError(
            f"store {shown!r} takes no path, query or fragment; use store options for the rest"
        )
    hosts = parse_hosts(netloc, _DEFAULT_PORT, shown)
    kwargs: dict[str, Any] = {
        "connect_timeout": opts.connect_timeout,
        "timeout": opts.timeout,
        "no_delay": opts.no_delay,
        # Every command waits for its reply: a write the server refused must fail.
        "default_noreply": False,
        "max_pool_size": opts.max_pool_size,
        "pool_idle_timeout": opts.pool_idle_timeout,
    }

    def connect() -> Any:
        if len(hosts) == 1:
            return PooledClient(hosts[0], **kwargs)
        return HashClient(hosts, use_pooling=True, **kwargs)

    hold = opts.max_pool_size is None and not opts.pool_idle_timeout
    return Plan(opts.key_prefix, hosts, connect, hold)


def check_prefix(prefix: str, shown: str) -> None:
    """Check that *prefix* can start a memcached key.

    :raises ConfigError: It holds a space, a control character or a character outside
        ASCII, or is so long that the store's keys would pass memcached's 250 bytes.
    """
    if not prefix.isascii() or any(c.isspace() or not c.isprintable() for c in prefix):
        raise ConfigError(
            f"store {mask_url(shown)!r}: key_prefix must be printable ASCII without spaces, "
            f"as memcached keys are; got {prefix!r}"
        )
    if len(prefix) > _LONGEST_PREFIX:
        raise ConfigError(
            f"store {mask_url(shown)!r}: key_prefix may be at most {_LONGEST_PREFIX} "
            f"characters (memcached keys are at most 250 bytes), got {len(prefix)}"
        )


class Servers:
    """Which server, that is which pymemcache client, holds a key; what sends the
    request path's commands to it; and the servers' clocks.

    :param client: A ``Client`` or ``PooledClient`` of one server, or a ``HashClient``
        of several, whose hasher and clients are used.
    """

    __slots__ = ("_clients", "_hasher", "_held", "_lock", "_offsets", "client")

    def __init__(self, client: Any) -> None:
        #: The pymemcache client the store was given.
        self.client = client
        if isinstance(client, HashClient):
            self._hasher: Any = client.hasher
            self._clients: dict[str, Any] = client.clients
        else:
            self._hasher = None
            self._clients = {"": client}
        # id(a server's client) -> the connections held for its request path
        self._held: dict[int, Held] = {}
        self._lock = threading.Lock()
        # server -> (its clock minus ours, when that was read: time.monotonic())
        self._offsets: dict[str, tuple[float, float]] = {}

    def each(self) -> list[Any]:
        """Every server's client."""
        return list(self._clients.values())

    def for_key(self, tag: str) -> Any:
        """The client of the server that holds the keys tagged *tag*.

        :raises MemcacheError: The ``HashClient`` has no server left.
        """
        if self._hasher is None:
            return self._clients[""]
        node = self._hasher.get_node(tag)
        if node is None:
            raise MemcacheError("the HashClient has no server left")
        return self._clients[node]

    def hold(self) -> None:
        """Keep a connection of each server's pool for each thread's ``gets``, ``add``
        and ``cas`` (see :mod:`~wsgisession.stores._memcached_direct`)."""
        for client in self._clients.values():
            if type(client) is PooledClient:
                self._held[id(client)] = Held(client)

    def sender(self, client: Any) -> Any:
        """What sends ``gets``, ``add`` and ``cas`` to *client*'s server: the
        connections held for it, or *client* itself; either takes pymemcache's
        arguments for them."""
        return self._held.get(id(client), client)

    def group(self, tagged: Iterable[tuple[str, str]]) -> list[tuple[Any, list[str]]]:
        """Split ``(name, tag)`` pairs by server: each server's client and its names."""
        if self._hasher is None:
            return [(self._clients[""], [name for name, _ in tagged])]
        groups: dict[int, tuple[Any, list[str]]] = {}
        for name, tag in tagged:
            client = self.for_key(tag)
            groups.setdefault(id(client), (client, []))[1].append(name)
        return list(groups.values())

    def exptime(self, client: Any, expires_at: float, now: float) -> int:
        """The expiry time to give memcached so that *client*'s server drops a value at
        *expires_at* (by the application's clock, whose time is *now*), never before.

        ``-1`` for a value already expired: memcached stores it and drops it at once.
        Up to 30 days, seconds from now; past that, the server's Unix time then.
        """
        left = expires_at - now
        if not left > 0:  # NaN too: a record that is never live
            return -1
        if math.isinf(left):
            return _LATEST_ABSOLUTE
        seconds = math.ceil(left) + _MARGIN
        if seconds <= MAX_RELATIVE:
            return seconds
        at = time.time() + self._offset(client) + left
        return min(math.ceil(at) + _ABSOLUTE_MARGIN, _LATEST_ABSOLUTE)

    def _offset(self, client: Any) -> float:
        """How far *client*'s server's clock is ahead of this machine's, in seconds."""
        name = str(getattr(client, "server", ""))
        known = self._offsets.get(name)
        if known is not None and time.monotonic() - known[1] < _OFFSET_TTL:
            return known[0]
        before = time.time()
        reported = int(client.stats()[b"time"])
        offset = reported - (before + time.time()) / 2
        with self._lock:
            self._offsets[name] = (offset, time.monotonic())
        return offset

    def forget_clocks(self) -> None:
        """Read every server's clock again before the next long expiry (a restart)."""
        with self._lock:
            self._offsets.clear()

    def close(self) -> None:
        """Close every connection, a held one once its command is done."""
        for held in self._held.values():
            held.release()
        for client in self.each():
            client.close()


def describe(client: Any) -> str:
    """Name a ready client's servers as a store URL, which holds no credentials."""
    clients = client.clients.values() if isinstance(client, HashClient) else [client]
    return "memcached://" + ",".join(_host_port(c.server) for c in clients)


def _host_port(server: object) -> str:
    if isinstance(server, tuple) and len(server) == 2:
        host, port = server
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(server)


def _read_options(shown: str, options: Mapping[str, object]) -> _Options:
    for name, value in options.items():
        if name not in _CHECKS:
            raise ConfigError(
                f"store {shown!r}: unknown store option {name!r}; known: "
                f"{', '.join(sorted(_CHECKS))}"
            )
        test, what = _CHECKS[name]
        if not test(value):
            raise ConfigError(f"store option {name!r} must be {what}, got {value!r}")
    checked: dict[str, Any] = dict(options)
    opts = _Options(**checked)
    check_prefix(opts.key_prefix, shown)
    return opts

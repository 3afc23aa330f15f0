"""Turn a Redis store URL and its ``store_options`` into a plan for building the client.

Everything here is checked without contacting a server, so a bad URL or option fails
when the store is built, and a server that is down fails only the first operation.
No message shows a password, a user name given as an option or what
``sentinel_kwargs`` holds: URLs are shown masked, and an option's value only when it
is no credential; a client the store is given ready is named from its host alone
(:func:`describe`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..errors import ConfigError
from ._hosts import parse_hosts
from .base import mask_url

__all__ = ["Client", "ClientPlan", "check_cluster_prefix", "describe", "plan_client"]

#: The clients a :class:`~wsgisession.stores.redis.RedisStore` drives.
Client: TypeAlias = redis.Redis | RedisCluster

_SSL_QUERY: Final = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
)


@dataclass(frozen=True)
class _Options:
    key_prefix: str = "session:"
    socket_timeout: float = 5.0
    socket_connect_timeout: float = 5.0
    health_check_interval: float = 0
    retry_on_timeout: bool = False
    retries: int = 2
    max_connections: int | None = None
    username: str | None = None
    password: str | None = None
    sentinel_kwargs: dict[str, Any] | None = None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# name -> (test, what the value must be)
_CHECKS: Final[dict[str, tuple[Callable[[Any], bool], str]]] = {
    "key_prefix": (lambda v: isinstance(v, str), "a string"),
    "socket_timeout": (lambda v: _number(v) and v > 0, "a positive number of seconds"),
    "socket_connect_timeout": (lambda v: _number(v) and v > 0, "a positive number of seconds"),
    "health_check_interval": (lambda v: _number(v) and v >= 0, "a number of seconds, 0 or more"),
    "retry_on_timeout": (lambda v: isinstance(v, bool), "true or false"),
    "retries": (lambda v: _whole(v) and v >= 0, "a whole number, 0 or more"),
    "max_connections": (lambda v: v is None or _whole(v) and v > 0, "a whole number above 0"),
    "username": (lambda v: v is None or isinstance(v, str), "a string"),
    "password": (lambda v: v is None or isinstance(v, str), "a string"),
    "sentinel_kwargs": (
        lambda v: v is None or isinstance(v, dict) and all(isinstance(k, str) for k in v),
        "a dict of redis.Redis keyword arguments, named by strings",
    ),
}

# Options whose values a message never shows, only their type.
_CREDENTIALS: Final = frozenset({"username", "password", "sentinel_kwargs"})

# Where a URL's host part ends.
_AUTHORITY_END: Final = re.compile(r"[/?#]")


@dataclass
class ClientPlan:
    """How to build a store's client, and what else to close with it."""

    key_prefix: str
    connect: Callable[[], Client]
    #: RedisCluster asks its startup nodes for the slot map in its constructor, so it
    #: is built on first use rather than with the store.
    lazy: bool = False
    #: Called after the client is closed (the Sentinel connections).
    closers: list[Callable[[], None]] = field(default_factory=list)
    #: Whether the store may keep connections of the pool for the request path: the
    #: pool is the store's own, and no ``max_connections`` was asked of it.
    hold_connection: bool = False


def plan_client(url: str, options: Mapping[str, object]) -> ClientPlan:
    """Check *url* and *options* and return how to build the client, contacting nothing.

    :raises ConfigError: The URL is malformed, or an option is unknown, of the wrong
        type or out of range; the message names it.
    """
    shown = mask_url(url)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError(f"store {shown!r}: a Redis URL starts with '{scheme}://'")
    _check_userinfo(scheme, rest)
    opts = _read_options(scheme, shown, options)
    try:
        parts = urlsplit(url)
    except ValueError:
        # Its message may quote the host part, credentials and all.
        raise ConfigError(f"store {shown!r} is not a valid URL") from None
    opts = _credentials(parts.netloc, shown, opts)
    kwargs = _connection_kwargs(opts)
    if scheme in ("redis", "rediss", "unix"):
        _check_standalone(scheme, parts, shown)
        try:
            client = redis.Redis.from_url(url, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"store {shown!r}: {exc}") from exc
        return ClientPlan(
            opts.key_prefix, lambda: client, hold_connection=opts.max_connections is None
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"store {shown!r} takes no query string; use store options")
    if scheme == "redis+sentinel":
        hosts = parse_hosts(parts.netloc.rpartition("@")[2], 26379, shown)
        service, db = _sentinel_path(parts.path, shown)
        _check_sentinel_kwargs(opts.sentinel_kwargs or {})
        sentinel_kwargs = {
            "socket_timeout": opts.socket_timeout,
            "socket_connect_timeout": opts.socket_connect_timeout,
            "retry": kwargs["retry"],
            **(opts.sentinel_kwargs or {}),
        }
        # redis-py annotates Sentinel and ClusterNode only from 8.2 on.
        sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **kwargs)  # type: ignore[no-untyped-call,unused-ignore]
        master: redis.Redis = sentinel.master_for(service, db=db)  # type: ignore[no-untyped-call,unused-ignore]
        return ClientPlan(
            opts.key_prefix,
            lambda: master,
            closers=[sentinel.close],
            hold_connection=opts.max_connections is None,
        )
    if scheme == "redis+cluster":
        hosts = parse_hosts(parts.netloc.rpartition("@")[2], 6379, shown)
        nodes = [ClusterNode(host, port) for host, port in hosts]  # type: ignore[no-untyped-call,unused-ignore]
        if parts.path not in ("", "/", "/0"):
            raise ConfigError(f"store {shown!r}: Redis Cluster has only database 0")
        check_cluster_prefix(opts.key_prefix, shown)
        return ClientPlan(
            opts.key_prefix, lambda: RedisCluster(startup_nodes=nodes, **kwargs), lazy=True
        )
    raise ConfigError(
        f"store {shown!r}: unknown Redis scheme {scheme!r}; use redis, rediss, unix, "
        "redis+sentinel or redis+cluster"
    )


def check_cluster_prefix(prefix: str, shown: str) -> None:
    """Check that a session's save lock can share its Redis Cluster slot.

    The lock's name carries the session's name as its hash tag, which works when
    *prefix* has no braces, or a hash tag of its own (which then decides every
    slot). Braces that make no hash tag would part the two.

    :raises ConfigError: *prefix* has braces that are no hash tag.
    """
    opening = prefix.find("{")
    if opening < 0 and "}" not in prefix:
        return
    closing = prefix.find("}", opening + 1) if opening >= 0 else -1
    if closing > opening + 1:
        return
    raise ConfigError(
        f"store {mask_url(shown)!r}: on Redis Cluster, key_prefix {prefix!r} may hold "
        "braces only as a hash tag, such as '{sessions}:'"
    )


def describe(client: Client) -> str:
    """Name the server of a ready *client* as a URL without credentials.

    For messages and ``repr``: built from the host, port, database or socket path
    alone, so that nothing a client holds (a password) can show, whatever the
    version of redis-py. Contacts nothing.
    """
    if isinstance(client, RedisCluster):
        # The nodes known from the slot map read when the client was built.
        nodes = ",".join(node.name for node in client.get_nodes())  # type: ignore[no-untyped-call,unused-ignore]
        return f"redis+cluster://{nodes}"
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    db = kwargs.get("db", 0)
    service = getattr(pool, "service_name", None)
    if isinstance(service, str):
        return f"redis+sentinel:///{service}/{db}"
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={db}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def _check_userinfo(scheme: str, rest: str) -> None:
    """Refuse a URL whose credentials spill out of its host part.

    A ``/``, ``?`` or ``#`` in a password ends the host part early, so that the rest
    of the password would be read as the path, query or fragment, and quoted by the
    messages about them; redis-py would use a piece of the password as the password.
    Such a URL shows as an ``@`` after the host part, which a Redis URL never needs
    there, but for a ``unix://`` URL's socket path (whose host part is empty).
    """
    end = _AUTHORITY_END.search(rest)
    if end is None or "@" not in rest[end.start() :]:
        return
    host = rest[: end.start()].rpartition("@")[2]
    if scheme != "unix" or host:
        # The URL is not shown: mask_url() can't know where such a password ends.
        raise ConfigError(
            f"store {scheme}:// URL: a '/', '?' or '#' in its user name or password, and "
            "an '@' anywhere after its host, must be percent-encoded (%2F, %3F, %23, %40); "
            "or give them as store options 'username' and 'password'"
        )


def _check_sentinel_kwargs(sentinel_kwargs: Mapping[str, object]) -> None:
    """Check that *sentinel_kwargs* are arguments a Sentinel's ``redis.Redis`` takes."""
    known = _redis_arguments()
    for name, value in sentinel_kwargs.items():
        if name not in known:
            raise ConfigError(
                f"store option 'sentinel_kwargs': {name!r} is no keyword argument of "
                "redis.Redis that a Sentinel's connection takes"
            )
        if name in ("username", "password") and not (value is None or isinstance(value, str)):
            raise ConfigError(
                f"store option 'sentinel_kwargs': its {name!r} must be a string, got "
                f"{_kind(value)}"
            )


@functools.cache
def _redis_arguments() -> frozenset[str]:
    # Sentinel gives each of its connections the host and port itself.
    names = set(inspect.signature(redis.Redis).parameters) - {"host", "port"}
    return frozenset(names)


def _kind(value: object) -> str:
    """What a message says of a credential's value: its type alone."""
    name = type(value).__name__
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def _read_options(scheme: str, shown: str, options: Mapping[str, object]) -> _Options:
    for name, value in options.items():
        if name not in _CHECKS:
            raise ConfigError(
                f"store {shown!r}: unknown store option {name!r}; known: "
                f"{', '.join(sorted(_CHECKS))}"
            )
        test, what = _CHECKS[name]
        if test(value):
            continue
        if name not in _CREDENTIALS:
            raise ConfigError(f"store option {name!r} must be {what}, got {value!r}")
        hint = ""
        if isinstance(value, int | float) and not isinstance(value, bool):
            # An ini file's "store.password = 123456" reads as a number, and turning it
            # back into text could change it (0x1f, 1e3, 007): the operator quotes it.
            hint = '; write one that looks like a number in double quotes ("123456")'
        raise ConfigError(f"store option {name!r} must be {what}, got {_kind(value)}{hint}")
    if options.get("sentinel_kwargs") is not None and scheme != "redis+sentinel":
        raise ConfigError(
            f"store {shown!r}: store option 'sentinel_kwargs' is only for redis+sentinel://"
        )
    checked: dict[str, Any] = dict(options)
    return _Options(**checked)


def _credentials(netloc: str, shown: str, opts: _Options) -> _Options:
    userinfo, at, _ = netloc.rpartition("@")
    user, colon, secret = userinfo.partition(":")
    in_url = {
        "username": unquote(user) if at and user else None,
        "password": unquote(secret) if at and colon else None,
    }
    for name, value in in_url.items():
        if value is not None and getattr(opts, name) is not None:
            raise ConfigError(
                f"store {shown!r}: give the {name} in the URL or as store option "
                f"{name!r}, not both"
            )
    return dataclasses.replace(
        opts,
        username=in_url["username"] or opts.username,
        password=in_url["password"] or opts.password,
    )


def _connection_kwargs(opts: _Options) -> dict[str, Any]:
    retry_on: tuple[type[Exception], ...] = (ConnectionError,)
    if opts.retry_on_timeout:
        retry_on += (TimeoutError,)
    # A short, capped retry: a connection the server dropped is redialled at once,
    # and a server that is really down fails the request in well under a second.
    retry = Retry(
        ExponentialWithJitterBackoff(cap=0.25, base=0.02),
        opts.retries,
        supported_errors=retry_on,
    )
    kwargs: dict[str, Any] = {
        "socket_timeout": opts.socket_timeout,
        "socket_connect_timeout": opts.socket_connect_timeout,
        "health_check_interval": opts.health_check_interval,
        "retry": retry,
    }
    for name in ("max_connections", "username", "password"):
        if getattr(opts, name) is not None:
            kwargs[name] = getattr(opts, name)
    return kwargs


def _check_standalone(scheme: str, parts: SplitResult, shown: str) -> None:
    try:
        params = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError(f"store {shown!r}: malformed query string") from None
    allowed = {"db"} | (_SSL_QUERY if scheme == "rediss" else set())
    for name, value in params:
        if name not in allowed:
            raise ConfigError(
                f"store {shown!r}: unknown URL parameter {name!r}; use store options"
            )
        if name == "db":
            _database(value, shown)
    path = parts.path.strip("/")
    if scheme == "unix":
        if not path:
            raise ConfigError(f"store {shown!r}: a unix:// URL needs a socket path")
        return
    if path:
        if any(name == "db" for name, _ in params):
            raise ConfigError(f"store {shown!r}: give the database in the path or as db=")
        _database(path, shown)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"store {shown!r}: bad port: {exc}") from exc
    if port == 0:
        raise ConfigError(f"store {shown!r}: bad port 0")


def _database(text: str, shown: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(
            f"store {shown!r}: the database must be a whole number, 0 or more, got {text!r}"
        )
    return int(text)


def _sentinel_path(path: str, shown: str) -> tuple[str, int]:
    segments = path.strip("/").split("/") if path.strip("/") else []
    if not segments or len(segments) > 2:
        raise ConfigError(
            f"store {shown!r}: a Sentinel URL is "
            "redis+sentinel://host:port[,host:port]/service[/db]"
        )
    db = _database(segments[1], shown) if len(segments) == 2 else 0
    return unquote(segments[0]), db

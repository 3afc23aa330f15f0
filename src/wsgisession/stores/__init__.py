"""The store registry: which class serves which URL scheme.

Built-in stores are imported only when a URL of theirs is opened, so
``import wsgisession`` needs neither redis-py nor SQLAlchemy. Third-party packages
add schemes with :func:`register_store` or the entry-point group
``wsgisession.stores``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final

from ..errors import ConfigError
from ._extras import install_hint
from .base import CorruptRecord, LockTimeout, Record, Store, mask_url

__all__ = [
    "CorruptRecord",
    "LockTimeout",
    "Record",
    "Store",
    "StoreFactory",
    "known_schemes",
    "open_store",
    "register_store",
    "wrap_client",
]

# The entry-point group third-party stores declare.
_GROUP: Final = "wsgisession.stores"

#: ``factory(url, **store_options) -> Store``, such as ``MyStore.from_url``.
StoreFactory = Callable[..., Store]

# scheme -> ("module:Class", the extra that installs its driver)
_BUILTIN: Final[dict[str, tuple[str, str | None]]] = {
    "file": ("wsgisession.stores.file:FileStore", None),
    "memcached": ("wsgisession.stores.memcached:MemcachedStore", "memcached"),
    "memory": ("wsgisession.stores.memory:MemoryStore", None),
    "mariadb": ("wsgisession.stores.sql:SQLStore", "mysql"),
    "mysql": ("wsgisession.stores.sql:SQLStore", "mysql"),
    "postgresql": ("wsgisession.stores.sql:SQLStore", "postgres"),
    "postgres": ("wsgisession.stores.sql:SQLStore", "postgres"),
    "redis": ("wsgisession.stores.redis:RedisStore", "redis"),
    "redis+cluster": ("wsgisession.stores.redis:RedisStore", "redis"),
    "redis+sentinel": ("wsgisession.stores.redis:RedisStore", "redis"),
    "rediss": ("wsgisession.stores.redis:RedisStore", "redis"),
    "sqlite": ("wsgisession.stores.sql:SQLStore", "sql"),
    "unix": ("wsgisession.stores.redis:RedisStore", "redis"),
}

_registered: dict[str, StoreFactory] = {}
_entry_points: dict[str, StoreFactory] | None = None
_lock = threading.Lock()


def register_store(scheme: str, factory: StoreFactory, *, replace: bool = False) -> None:
    """Serve URLs of *scheme* with ``factory(url, **store_options)``.

    :param scheme: The URL scheme, without ``:``, such as ``"mongo"``.
    :param factory: A callable returning a :class:`Store`, usually ``Class.from_url``.
    :param replace: Allow replacing a scheme that is already registered or built in.
    :raises ConfigError: The scheme is taken and *replace* is false.
    """
    scheme = scheme.lower()
    with _lock:
        # Checked under the lock, so of two threads registering one scheme only one wins.
        if not replace and (scheme in _registered or scheme in _BUILTIN):
            raise ConfigError(
                f"store scheme {scheme!r} is already registered; pass replace=True to replace it"
            )
        _registered[scheme] = factory


def known_schemes() -> list[str]:
    """Return every scheme :func:`open_store` can serve, sorted."""
    return sorted({*_BUILTIN, *_registered, *_load_entry_points()})


def open_store(url: str, **options: Any) -> Store:
    """Build the store for *url*, passing it *options* (``store_options``).

    The scheme is looked up as given (``redis+cluster``), then by the part before
    ``+`` (``postgresql+psycopg`` is served by ``postgresql``), then among the
    entry points of the group ``wsgisession.stores``. Nothing is contacted.

    :raises ConfigError: The scheme is unknown, its driver is not installed, or the
        store rejects the URL or an option.
    """
    scheme, sep, _ = url.partition(":")
    scheme = scheme.lower()
    if not sep or not scheme:
        raise ConfigError(
            f"store {mask_url(url)!r} is not a URL; use e.g. 'file:./sessions' or "
            "'redis://localhost:6379/0'"
        )
    factory = _find_factory(scheme) or _find_factory(scheme.partition("+")[0])
    if factory is None:
        raise ConfigError(f"unknown store scheme {scheme!r}; known: {', '.join(known_schemes())}")
    _check_signature(scheme, factory, url, options)
    store = factory(url, **options)
    if not isinstance(store, Store):
        raise ConfigError(
            f"the factory for scheme {scheme!r} returned {type(store).__name__}, not a Store"
        )
    return store


def wrap_client(client: object, **options: Any) -> Store | None:
    """Return a store around a ready driver object, or ``None`` if it is not one.

    A :class:`sqlalchemy.Engine` becomes a ``SQLStore``; a ``redis.Redis`` or
    ``redis.cluster.RedisCluster`` client becomes a ``RedisStore``; a pymemcache
    ``Client``, ``PooledClient`` or ``HashClient`` becomes a ``MemcachedStore``.
    *options* are the store's keyword arguments (``store_options``). The driver is
    already imported when such an object exists, so nothing new is imported for
    other values.
    """
    module = type(client).__module__.partition(".")[0]
    if module == "sqlalchemy":
        import sqlalchemy

        from .sql import SQLStore

        if isinstance(client, sqlalchemy.Engine):
            return _around(SQLStore, client, options)
    elif module == "redis":
        import redis
        from redis.cluster import RedisCluster

        from .redis import RedisStore

        if isinstance(client, redis.Redis | RedisCluster):
            return _around(RedisStore, client, options)
    elif module == "pymemcache":
        from pymemcache.client.base import Client, PooledClient
        from pymemcache.client.hash import HashClient

        from .memcached import MemcachedStore

        if isinstance(client, Client | PooledClient | HashClient):
            return _around(MemcachedStore, client, options)
    return None


def _around(store_class: type[Store], client: object, options: dict[str, Any]) -> Store:
    """A *store_class* around the ready *client*, with *options* it must take."""
    parameters = list(inspect.signature(store_class).parameters.values())[1:]
    takes = [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - set(takes))
    if unknown:
        # Connection options (a pool's size, a timeout) belong to the client, which is
        # built already.
        raise ConfigError(
            f"store option {', '.join(map(repr, unknown))} can't apply to a ready "
            f"{type(client).__name__}: set it on that object; a store around one takes "
            f"{', '.join(takes) or 'no option'}"
        )
    return store_class(client, **options)  # type: ignore[call-arg]


def _check_signature(
    scheme: str, factory: StoreFactory, url: str, options: dict[str, Any]
) -> None:
    """Refuse options the factory's signature can't take, as a :exc:`ConfigError`.

    Checked before the call, so that a ``TypeError`` raised inside a factory for
    another reason is never mistaken for a bad option.
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a callable without an introspectable signature
        return
    try:
        signature.bind(url, **options)
    except TypeError as exc:
        given = ", ".join(map(repr, sorted(options))) or "none"
        raise ConfigError(
            f"store scheme {scheme!r} does not take these store options ({given}): {exc}"
        ) from None


def _find_factory(scheme: str) -> StoreFactory | None:
    if scheme in _registered:
        return _registered[scheme]
    if scheme in _BUILTIN:
        return _import_builtin(scheme)
    return _load_entry_points().get(scheme)


def _import_builtin(scheme: str) -> StoreFactory:
    target, extra = _BUILTIN[scheme]
    try:
        store_class: type[Store] = EntryPoint(scheme, target, _GROUP).load()
    except ImportError as exc:
        hint = f": {install_hint(extra)}" if extra else ""
        raise ConfigError(
            f"store scheme {scheme!r} needs a driver that is not installed"
            f" ({exc.name or exc}){hint}"
        ) from exc
    return store_class.from_url


def _load_entry_points() -> dict[str, StoreFactory]:
    global _entry_points
    if _entry_points is None:
        found: dict[str, StoreFactory] = {}
        for entry in entry_points(group=_GROUP):
            found[entry.name.lower()] = _lazy_entry_point(entry)
        _entry_points = found
    return _entry_points


def _lazy_entry_point(entry: EntryPoint) -> StoreFactory:
    # Loading is deferred to the first URL of that scheme, so a broken plugin only
    # breaks the applications that use it.
    def factory(url: str, **options: Any) -> Store:
        try:
            target: Any = entry.load()
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"store scheme {entry.name!r}: entry point {entry.value!r} cannot be loaded: {exc}"
            ) from exc
        if isinstance(target, type) and issubclass(target, Store):
            target = target.from_url
        result: Store = target(url, **options)
        return result

    return factory

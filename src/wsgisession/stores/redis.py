"""A store that keeps each session in one Redis hash, dropped by Redis's own expiry.

Works with a standalone server (``redis://``, ``rediss://``, ``unix://``), a master
found through Sentinel (``redis+sentinel://``) and Redis Cluster
(``redis+cluster://``). Every write is one Lua script, so a save is one round trip
when nothing raced, and a load is one ``HGETALL``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Self

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import RedisClusterException, RedisError

from ..errors import ConfigError
from . import redis_scripts
from .base import Record, Store, translate_errors
from .redis_url import Client, ClientPlan, plan_client

__all__ = ["RedisStore"]

log = logging.getLogger("wsgisession")

_ERRORS = (RedisError, RedisClusterException, OSError)
_COUNT_BATCH = 500


class RedisStore(Store):
    """Keep sessions in Redis: one hash per session under ``<key_prefix><key>``.

    The hash holds the fields ``data``, ``meta``, ``version``, ``created_at``,
    ``expires_at``, ``last_seen`` and, when the session has a user, ``user_id``.
    Redis drops it by itself when it expires, so :meth:`cleanup` has nothing to do;
    :meth:`load` still checks ``expires_at`` against the application's clock.

    The store owns *client* and closes it in :meth:`close`. On Redis Cluster a
    ``save`` that *replaces* an older key is two steps, as the two keys live in
    different slots: the new record is written, then the old one deleted. A failure
    between the two leaves the old record to expire on its own.

    :param client: A ready :class:`redis.Redis` or :class:`~redis.cluster.RedisCluster`
        (with ``decode_responses`` off), or a callable that builds one on first use.
    :param key_prefix: Put before every key, to keep sessions apart from other data.
    :raises ConfigError: *client* decodes responses to ``str``, which would garble
        binary session data.
    """

    native_expiry: ClassVar[bool] = True

    def __init__(
        self, client: Client | Callable[[], Client], *, key_prefix: str = "session:"
    ) -> None:
        self.key_prefix = key_prefix
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._scripts: dict[str, Script] = {}
        self._build: Callable[[], Client] | None = None
        self._name = f"RedisStore({key_prefix!r})"
        self._closers: list[Callable[[], None]] = []
        if isinstance(client, redis.Redis | RedisCluster):
            self._name = repr(client)
            self._adopt(client)
        else:
            self._build = client

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from a Redis URL without contacting the server.

        ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS; the
        query may carry ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``,
        ``ssl_keyfile``, ``ssl_check_hostname``), ``unix://[[user]:password@]/path?db=0``,
        ``redis+sentinel://[[user]:password@]host:port[,host:port]/service[/db]`` (the
        credentials are the master's; a Sentinel's own go in ``sentinel_kwargs``) and
        ``redis+cluster://[[user]:password@]host:port[,host:port]``.

        :param url: The store URL.
        :param options: ``key_prefix``, ``socket_timeout`` and ``socket_connect_timeout``
            (seconds, default 5), ``health_check_interval`` (seconds, default 0: off),
            ``retries`` (reconnection attempts per command, default 2),
            ``retry_on_timeout`` (default ``False``, as a timed-out write may have
            been applied), ``max_connections``, ``username``, ``password``, and
            ``sentinel_kwargs`` (a dict for the connections to the Sentinels).
        :raises ConfigError: The URL is malformed or an option unknown or wrong.
        """
        plan: ClientPlan = plan_client(url, options)
        store = cls(plan.connect if plan.lazy else plan.connect(), key_prefix=plan.key_prefix)
        store._name = url
        store._closers = plan.closers
        return store

    @property
    def client(self) -> Client:
        """The redis-py client, built now if the store was given a builder.

        :raises StoreError: The builder could not reach the cluster.
        """
        client = self._client
        if client is not None:
            return client
        with self._lock, self._errors():
            if self._client is None:
                assert self._build is not None
                self._adopt(self._build())
            assert self._client is not None
            return self._client

    def load(self, key: str) -> Record | None:
        """Return the live record under *key*, or ``None``; one ``HGETALL``."""
        with self._errors():
            fields: dict[Any, Any] = self.client.hgetall(self.key_prefix + key)
        if not fields:
            return None
        try:
            user_id = fields.get(b"user_id")
            record = Record(
                data=fields[b"data"],
                version=int(fields[b"version"]),
                created_at=float(fields[b"created_at"]),
                expires_at=float(fields[b"expires_at"]),
                last_seen=float(fields[b"last_seen"]),
                user_id=None if user_id is None else user_id.decode(),
                meta=fields.get(b"meta", b""),
            )
        except (KeyError, ValueError) as exc:
            log.warning("session %s in Redis cannot be decoded (%r); ignored", key[:8], exc)
            return None
        return record if record.expires_at > time.time() else None

    def save(
        self,
        key: str,
        record: Record,
        *,
        expected_version: int | None,
        replaces: str | None = None,
    ) -> bool:
        """Compare the version and write the record in one Lua script.

        With *replaces*, the old key is deleted in the same script, except on Redis
        Cluster, where it is deleted right after a successful write.
        """
        now = time.time()
        keys = [self.key_prefix + key]
        cluster = isinstance(self.client, RedisCluster)
        if replaces is not None and replaces != key and not cluster:
            keys.append(self.key_prefix + replaces)
        args: list[str | bytes | int] = [
            "" if expected_version is None else str(expected_version),
            repr(now),
            _ttl_ms(record.expires_at, now),
            record.data,
            record.meta,
            str(record.version),
            repr(float(record.created_at)),
            repr(float(record.expires_at)),
            repr(float(record.last_seen)),
            "0" if record.user_id is None else "1",
            record.user_id or "",
        ]
        saved = self._run("save", keys, args) == 1
        if saved and cluster and replaces is not None and replaces != key:
            with self._errors():
                self.client.delete(self.key_prefix + replaces)
        return saved

    def refresh(self, key: str, expires_at: float, last_seen: float) -> bool:
        """Move a live record's expiry and ``last_seen`` forward, never back."""
        now = time.time()
        args: list[str | bytes | int] = [
            repr(now),
            repr(float(expires_at)),
            repr(float(last_seen)),
            _ttl_ms(expires_at, now),
        ]
        return self._run("refresh", [self.key_prefix + key], args) == 1

    def delete(self, key: str) -> bool:
        """Remove the record under *key*; ``True`` if a live one was there."""
        return self._run("delete", [self.key_prefix + key], [repr(time.time())]) == 1

    def ping(self) -> None:
        """Send ``PING`` (to every primary on Cluster).

        :raises StoreError: The server cannot be reached.
        """
        with self._errors():
            self.client.ping()

    def cleanup(self, *, limit: int | None = None) -> int:
        """Return ``0``: Redis drops expired sessions by itself."""
        return 0

    def count(self) -> int:
        """Count live sessions with ``SCAN`` over the prefix (every primary on Cluster).

        This reads every session key, so it suits the command line, not a request.
        """
        now = time.time()
        total = 0
        with self._errors():
            batch: list[bytes] = []
            for name in self._scan():
                batch.append(name)
                if len(batch) >= _COUNT_BATCH:
                    total += self._count_live(batch, now)
                    batch = []
            total += self._count_live(batch, now)
        return total

    def close(self) -> None:
        """Close the client's connections (and the Sentinels'); safe to repeat."""
        with self._lock, self._errors():
            client = self._client
            if self._build is not None:
                self._client = None
                self._scripts = {}
            if client is not None:
                client.close()
            for closer in self._closers:
                closer()

    def __repr__(self) -> str:
        return f"<RedisStore {self._name}>"

    def _adopt(self, client: Client) -> None:
        if client.get_encoder().decode_responses:
            raise ConfigError(
                "RedisStore needs a client with decode_responses=False: sessions are bytes"
            )
        self._scripts = {
            "save": client.register_script(redis_scripts.SAVE),
            "refresh": client.register_script(redis_scripts.REFRESH),
            "delete": client.register_script(redis_scripts.DELETE),
        }
        self._client = client

    def _run(self, name: str, keys: Sequence[str], args: Sequence[str | bytes | int]) -> int:
        client = self.client
        with self._errors():
            result: int = self._scripts[name](keys=keys, args=args, client=client)
        return result

    def _scan(self) -> Iterator[bytes]:
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.key_prefix) + "*"
        names: Iterator[bytes] = self.client.scan_iter(match=pattern, count=_COUNT_BATCH)
        return names

    def _count_live(self, names: list[bytes], now: float) -> int:
        if not names:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hget(name, "expires_at")
        stamps: list[bytes | None] = pipe.execute()
        pipe.reset()
        return sum(1 for stamp in stamps if stamp is not None and _is_after(stamp, now))

    def _errors(self) -> AbstractContextManager[None]:
        return translate_errors(self._name, *_ERRORS)


def _ttl_ms(expires_at: float, now: float) -> int:
    # Relative to the application's now, so Redis drops the record when the
    # application's clock reaches expires_at even if the server's clock is off.
    return math.ceil((expires_at - now) * 1000)


def _is_after(stamp: bytes, now: float) -> bool:
    try:
        return float(stamp) > now
    except ValueError:
        return False

"""A store that keeps each session in one Redis string, dropped by Redis's own expiry.

Works with a standalone server (``redis://``, ``rediss://``, ``unix://``), a master
found through Sentinel (``redis+sentinel://``) and Redis Cluster
(``redis+cluster://``). Every write is one Lua script, so a save is one round trip
when nothing raced, and a load is one ``GET``. The string's layout is described in
:mod:`~wsgisession.stores.redis_scripts`.

Each user has a sorted set of their sessions' keys, scored by expiry (see
:mod:`~wsgisession.stores.redis_scripts`). On a standalone server or a Sentinel
master the scripts change it together with the session, atomically. On Redis Cluster
a session and its user's set live in different slots, so the set is changed by a
second command after the session write (those steps are in
:mod:`~wsgisession.stores._redis_cluster`), and :meth:`RedisStore.user_records`
checks every entry against the session it names, dropping the stale ones.

:meth:`RedisStore.save_locked` holds a per-session lock key with a lease, and its
waiters queue in a list, served first come, first served; the keys are described in
:mod:`~wsgisession.stores.redis_scripts`.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Final, Self

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from ..errors import ConfigError, StoreError
from . import _redis_cluster, redis_scripts
from ._redis_replies import strings, user_of, wrong_type
from .base import CorruptRecord, LockTimeout, Record, Store, mask_url, translate_errors
from .redis_url import Client, ClientPlan, check_cluster_prefix, describe, plan_client

__all__ = ["RedisStore"]

log = logging.getLogger("wsgisession")

_ERRORS = (RedisError, RedisClusterException, OSError)
_COUNT_BATCH = 500

# How long a save lock is a holder's: it only has to outlast one load, merge and
# write, and is what the waiters lose when a holder dies.
_LEASE: Final = 5.0
# How long a waiter blocks at a time before it looks for a holder that died; also
# bounded by half the socket timeout, so a block never reads as a dead connection.
_POLL: Final = 1.0
# BLPOP reads a timeout that rounds to 0 ms as "block forever".
_SHORTEST_BLOCK: Final = 0.01
# The line outlives its last waiter's last look this long.
_LINE_TTL: Final = _LEASE + 2 * _POLL


class RedisStore(Store):
    """Keep sessions in Redis: one string per session under ``<key_prefix><key>``.

    The string is a fixed header (format, version, ``created_at``, ``expires_at``,
    ``last_seen``, lengths), then the user id, the meta and the data; see
    :mod:`~wsgisession.stores.redis_scripts`. Anything else under a session's key (a
    hash of an earlier layout, a string in no known format or cut short) makes
    :meth:`load` raise :exc:`~wsgisession.stores.base.CorruptRecord`; every other
    operation treats it as no record, and a save replaces it. Redis drops a record by
    itself when it expires, so :meth:`cleanup` has nothing to do; :meth:`load` still
    checks ``expires_at`` against the application's clock.

    Each user's sessions are listed in a sorted set under ``<key_prefix>u:`` and the
    hex of the user id's UTF-8, whose members are the sessions' keys scored by their
    ``expires_at``; it drops expired members on every write and expires with its
    latest member. On a standalone server or a Sentinel master it changes in the same
    script as the session.

    :meth:`save_locked` takes a lock key beside the session's, in the same Cluster
    slot, holding a random token with a lease of a few seconds; callers that find it
    taken wait in line in a list and are handed the lock in the order they asked,
    each woken by its own ``BLPOP``. A plain :meth:`save` reads the lock key in its
    script and fails while the lock is held. A holder that dies leaves its lease to
    run out, and the first waiter to look after that hands the lock on. Tombstones
    (version ``0``) are stored like any record; :meth:`count` leaves them out.

    The store owns *client* and closes it in :meth:`close`. On Redis Cluster, where
    keys live in different slots, a ``save`` that *replaces* an older key is two
    steps. With ``replaces_version`` (a regenerate), the old record is first deleted
    by compare-and-delete, and the new one written only if that succeeded: a failure
    between the two loses the session (its user is logged out), never a concurrent
    write, and never leaves two live ids. Without it, the new record is written, then
    the old one deleted, and a failure between the two leaves the old record to
    expire on its own. A tombstone is written in the old record's place in the same
    step as that delete would be, with the same guarantees: a failure after the first
    step leaves the tombstone (or, in the second order, the old record) and no new
    session. :meth:`save_locked` with ``moves_to`` does the same as a regenerate: it
    first vacates the old key under the lock (checking the lease and the version),
    then writes the new one. There, the user's set is changed
    after the session: a save or refresh whose set update fails raises
    :exc:`~wsgisession.StoreError` although the session was written (its next save or
    refresh links it again), and a failed removal is left for :meth:`user_records`,
    which drops entries whose session is gone or belongs to someone else.

    :param client: A ready :class:`redis.Redis` or :class:`~redis.cluster.RedisCluster`
        (with ``decode_responses`` off), or a callable that builds one on first use.
    :param key_prefix: Put before every key, to keep sessions apart from other data.
    :raises ConfigError: *client* decodes responses to ``str``, which would garble
        binary session data, or *client* is a Redis Cluster and *key_prefix* holds
        braces that are no hash tag (which would part a session from its lock).
    """

    native_expiry: ClassVar[bool] = True

    def __init__(
        self, client: Client | Callable[[], Client], *, key_prefix: str = "session:"
    ) -> None:
        self.key_prefix = key_prefix
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._build: Callable[[], Client] | None = None
        self._name = f"RedisStore({key_prefix!r})"
        self._closers: list[Callable[[], None]] = []
        self._poll = _POLL
        if isinstance(client, redis.Redis | RedisCluster):
            self._name = describe(client)
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
        # Masked once here, as the name goes into repr() and every message.
        store._name = mask_url(url)
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
        """Return the live record under *key*, or ``None``; one ``GET``.

        :raises CorruptRecord: The key holds another type than a string, or a string
            that is no record in this store's layout.
        """
        with self._errors():
            try:
                value: Any = self.client.get(self.key_prefix + key)
            except ResponseError as exc:
                if not wrong_type(exc):
                    raise
                raise CorruptRecord(
                    "the Redis key holds another type than a string (an older layout?)"
                ) from None
        if value is None:
            return None
        try:
            record = redis_scripts.decode(value)
        except ValueError as exc:
            raise CorruptRecord(f"the Redis string is no session record: {exc}") from None
        return record if record.expires_at > time.time() else None

    def save(
        self,
        key: str,
        record: Record,
        *,
        expected_version: int | None,
        replaces: str | None = None,
        replaces_version: int | None = None,
        tombstone: Record | None = None,
    ) -> bool:
        """Compare the version and write the record in one Lua script.

        With *replaces*, the old key is deleted, or overwritten by *tombstone*, in
        the same script (once its version is checked against *replaces_version*, if
        given), except on Redis Cluster, where the two keys live in different slots;
        see ``_redis_cluster.move``. The user index changes in the same script too,
        except on Redis Cluster, where it changes right after a successful write. The
        script also reads the key's save lock, and writes nothing while a
        :meth:`save_locked` holds it: no extra round trip, one more ``EXISTS``.
        """
        now = time.time()
        keys = [self.key_prefix + key, self._lock_name(key)]
        cluster = self._cluster()
        replaced = replaces if replaces != key else None
        if replaced is not None and not cluster:
            keys.append(self.key_prefix + replaced)
        args: list[str | bytes | int] = [
            redis_scripts.version_arg(expected_version),
            repr(now),
            redis_scripts.ttl_ms(record.expires_at, now),
            "" if cluster else self._index_prefix,
            key,
            replaces or "",
            redis_scripts.version_arg(replaces_version),
            *redis_scripts.tombstone_args(tombstone, now),
            redis_scripts.encode(record),
        ]
        if cluster and replaced is not None and replaces_version is not None:
            return _redis_cluster.move(
                self, key, record, expected_version, replaced, replaces_version, tombstone, now
            )
        result = self._run(redis_scripts.SAVE, keys, args)
        saved: bool = result[0] == 1
        if saved and cluster:
            _redis_cluster.after_save(
                self, key, record, user_of(result[1]), replaced, tombstone=tombstone
            )
        return saved

    def save_locked(
        self,
        key: str,
        build: Callable[[Record], Record | None],
        *,
        timeout: float,
        moves_to: str | None = None,
        tombstone: Record | None = None,
    ) -> Record | None:
        """Write ``build(current)`` holding *key*'s save lock, taken in turn.

        The lock is a key beside the session's holding this call's random token
        with a lease. Taking it is one script that also returns the session, so an
        uncontended call is two round trips: that one, then the write, a script that
        checks the lease and the version built on and hands the lock to the next
        waiter as it writes. A caller that finds the lock taken joins the line and
        blocks until it is handed the lock, waking every second or so to take over
        from a holder whose lease ran out. A holder whose own lease ran out before it
        wrote starts over, at the back of the line, and *build* runs again.

        :raises LockTimeout: The lock was not this call's within *timeout* seconds.
        :raises StoreError: The server failed.
        """
        deadline = time.monotonic() + timeout
        target = moves_to if moves_to != key else None
        lock = self._lock_name(key)
        keys = [self.key_prefix + key, lock, lock + ":q"]
        while True:
            token, value = self._take(key, keys, deadline, timeout)
            done, written = self._hold(keys, token, key, value, build, target, tombstone)
            if done:
                return written
            log.warning("session %s: a save lock's lease ran out before its write", key[:8])

    def _take(
        self, key: str, keys: list[str], deadline: float, timeout: float
    ) -> tuple[str, bytes | None]:
        """Take the save lock of *keys*, waiting in line until *deadline*.

        Return this holder's token and the session's value as it was taken.
        """
        token = secrets.token_hex(8)
        baton = keys[1] + ":" + token
        args: list[str | bytes | int] = [token, _ms(_LEASE), _ms(_LINE_TTL), ""]
        try:
            while True:
                result = self._run(redis_scripts.TAKE, [*keys, baton], args)
                if result[0] == 1:
                    value: bytes | None = result[1] or None
                    return token, value
                if args[3]:
                    break  # out of the line, which the script left
                left = deadline - time.monotonic()
                if left <= 0:
                    args[3] = "1"  # one last look, leaving the line unless it is ours now
                    continue
                # The baton wakes it when the lock is handed over; the timeout, to look
                # for a holder whose lease ran out.
                block = max(min(self._poll, left), _SHORTEST_BLOCK)
                with self._errors():
                    self.client.blpop([baton], timeout=block)
        except StoreError:
            # Out of the line now if the server still answers, rather than be handed
            # the lock later and hold the line up for a lease.
            self._release(keys, token, quiet=True)
            raise
        raise LockTimeout(
            f"{mask_url(self._name)}: session {key[:8]}… stayed locked for {timeout:g} s"
        )

    def _hold(
        self,
        keys: list[str],
        token: str,
        key: str,
        value: bytes | None,
        build: Callable[[Record], Record | None],
        target: str | None,
        tombstone: Record | None,
    ) -> tuple[bool, Record | None]:
        """Build and write as the lock's holder, and see that the lock is let go.

        Return ``(True, what save_locked returns)``, or ``(False, None)`` if the
        lease ran out first and the caller must start over.
        """
        held = True
        try:
            while True:
                current = _decode(key, value)
                if current is None or current.expires_at <= time.time():
                    return True, None
                record = build(current)
                if record is None:
                    return True, None
                cluster = self._cluster()
                if target is not None and cluster and not _redis_cluster.free(self, target):
                    log.warning("session %s: the key a locked save moves to is taken", key[:8])
                    return True, None
                result = self._write_locked(keys, token, current, record, key, target, tombstone)
                if result[0] == 2:  # a regenerate replaced it meanwhile: build on that
                    value = result[1] or None
                    continue
                held = False  # the script handed the lock over, or it was not ours
                if result[0] == -1:
                    return False, None
                if result[0] == 3:
                    log.warning("session %s: the key a locked save moves to is taken", key[:8])
                if result[0] != 1:
                    return True, None
                if cluster and target is not None:
                    moved = _redis_cluster.finish_locked_move(
                        self, key, target, record, user_of(result[1])
                    )
                    return True, moved
                if cluster:
                    _redis_cluster.after_save(self, key, record, user_of(result[1]), None)
                return True, record
        except BaseException:
            if held:
                held = False
                # What failed (build's exception, say) goes out unchanged.
                self._release(keys, token, quiet=True)
            raise
        finally:
            if held:
                self._release(keys, token)

    def _write_locked(
        self,
        keys: list[str],
        token: str,
        current: Record,
        record: Record,
        key: str,
        target: str | None,
        tombstone: Record | None,
    ) -> Any:
        now = time.time()
        cluster = self._cluster()
        if target is not None and not cluster:
            keys = [*keys, self.key_prefix + target]
        args: list[str | bytes | int] = [
            token,
            _ms(_LEASE),
            redis_scripts.version_arg(current.version),
            repr(now),
            redis_scripts.ttl_ms(record.expires_at, now),
            "" if cluster else self._index_prefix,
            key,
            target or "",
            *redis_scripts.tombstone_args(tombstone, now),
            redis_scripts.encode(record),
        ]
        return self._run(redis_scripts.LOCKED, keys, args)

    def _release(self, keys: list[str], token: str, *, quiet: bool = False) -> None:
        """Hand the lock of *keys* on if *token* holds it, or leave its line.

        *quiet* logs a failure instead of raising it: the lease runs out anyway.
        """
        try:
            self._run(
                redis_scripts.RELEASE,
                [keys[1], keys[2], keys[1] + ":" + token],
                [token, _ms(_LEASE)],
            )
        except StoreError as exc:
            if not quiet:
                raise
            log.warning("could not let go of a session's save lock in Redis: %s", exc)

    def refresh(self, key: str, expires_at: float, last_seen: float) -> bool:
        """Move a live record's expiry and ``last_seen`` forward, never back."""
        now = time.time()
        cluster = self._cluster()
        args: list[str | bytes | int] = [
            repr(now),
            repr(float(expires_at)),
            repr(float(last_seen)),
            redis_scripts.ttl_ms(expires_at, now),
            "" if cluster else self._index_prefix,
            key,
        ]
        result = self._run(redis_scripts.REFRESH, [self.key_prefix + key], args)
        if result[0] != 1:
            return False
        user_id = user_of(result[2])
        if cluster and result[1] == 1 and user_id is not None:
            _redis_cluster.change_index(self, user_id, "link", [(key, float(expires_at))])
        return True

    def delete(self, key: str) -> bool:
        """Remove the record under *key*; ``True`` if a live one was there."""
        return self._delete(key, cluster=self._cluster())

    def _delete(self, key: str, *, cluster: bool, tombstone: Record | None = None) -> bool:
        now = time.time()
        args: list[str | bytes | int] = [repr(now), "" if cluster else self._index_prefix, key]
        if tombstone is not None:
            args += ["", *redis_scripts.tombstone_args(tombstone, now)]
        result = self._run(redis_scripts.DELETE, [self.key_prefix + key], args)
        user_id = user_of(result[1])
        if cluster and user_id is not None:
            _redis_cluster.change_index(self, user_id, "unlink", [(key, 0.0)], quiet=True)
        live: bool = result[0] == 1
        return live

    def ping(self) -> None:
        """Send ``PING`` (to every primary on Cluster).

        :raises StoreError: The server cannot be reached.
        """
        with self._errors():
            self.client.ping()

    def cleanup(self, *, limit: int | None = None) -> int:
        """Return ``0``: Redis drops expired sessions by itself."""
        return 0

    def user_records(self, user_id: str) -> list[tuple[str, Record]]:
        """Return the user's live records: their set, then one pipelined ``GET``.

        Each entry is checked against the session it names, on every deployment; an
        entry whose session is gone, expired or now someone else's is left out and
        dropped from the set (needed on Redis Cluster, and cheap insurance elsewhere
        against keys Redis evicted or dropped early by its own clock).
        """
        name = self._user_key(user_id)
        now = time.time()
        client = self.client
        with self._errors():
            answer: Any = client.zrangebyscore(name, f"({now!r}", "+inf", withscores=True)
            entries: list[tuple[bytes, float]] = [(m, float(s)) for m, s in answer]
            if not entries:
                return []
            pipe = client.pipeline(transaction=False)
            for member, _ in entries:
                pipe.get(self.key_prefix.encode() + member)
            values = strings(pipe.execute(raise_on_error=False))
            pipe.reset()
        found: list[tuple[str, Record]] = []
        stale: list[tuple[str | bytes, float]] = []
        for (member, score), value in zip(entries, values, strict=True):
            key = member.decode(errors="replace")
            record = _decode(key, value)
            if record is not None and record.expires_at > now and record.user_id == user_id:
                found.append((key, record))
            else:
                stale.append((member, score))
        if stale:
            _redis_cluster.change_index(self, user_id, "prune", stale, quiet=True)
        return found

    def count(self) -> int:
        """Count live sessions with ``SCAN`` over the prefix (every primary on Cluster).

        This reads every session key's header and length, so it suits the command
        line, not a request. Tombstones are not counted, nor the user sets and save
        locks, nor a string whose header is no record's or whose lengths don't fit.
        """
        now = time.time()
        total = 0
        with self._errors():
            batch: list[bytes] = []
            skipped = (self._index_prefix.encode(), self._lock_prefix.encode())
            for name in self._scan():
                if name.startswith(skipped):
                    continue
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
        if isinstance(client, RedisCluster):
            check_cluster_prefix(self.key_prefix, self._name)
        socket_timeout = client.get_connection_kwargs().get("socket_timeout")
        self._poll = min(_POLL, socket_timeout / 2) if socket_timeout else _POLL
        self._client = client

    def _run(
        self,
        script: redis_scripts.Script,
        keys: Sequence[str],
        args: Sequence[str | bytes | int],
    ) -> Any:
        """Run *script* by its SHA1, loading it first if the server does not know it."""
        client = self.client
        with self._errors():
            try:
                return client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                # A server that restarted, failed over or was never sent it.
                client.script_load(script.source)
                return client.evalsha(script.sha, len(keys), *keys, *args)

    def _cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    @property
    def _index_prefix(self) -> str:
        # Session keys are 64 hex digits after the prefix, so no user set's name is one.
        return self.key_prefix + "u:"

    @property
    def _lock_prefix(self) -> str:
        # As with "u:", no session key starts with "l:".
        return self.key_prefix + "l:"

    def _lock_name(self, key: str) -> str:
        # The session's name as the hash tag: the same Cluster slot as the session.
        return f"{self._lock_prefix}{{{self.key_prefix}{key}}}"

    def _user_key(self, user_id: str | bytes) -> str:
        # Hex of the UTF-8, as the scripts build it: any user id makes a distinct name.
        raw = user_id.encode() if isinstance(user_id, str) else user_id
        return self._index_prefix + raw.hex()

    def _scan(self) -> Iterator[bytes]:
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.key_prefix) + "*"
        names: Iterator[bytes] = self.client.scan_iter(match=pattern, count=_COUNT_BATCH)
        return names

    def _count_live(self, names: list[bytes], now: float) -> int:
        if not names:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.getrange(name, 0, redis_scripts.HEADER.size - 1)
            pipe.strlen(name)
        replies = pipe.execute(raise_on_error=False)
        pipe.reset()
        heads = strings(replies[::2])
        return sum(
            1 for head, size in zip(heads, replies[1::2], strict=True) if _is_live(head, size, now)
        )

    def _errors(self) -> AbstractContextManager[None]:
        return translate_errors(self._name, *_ERRORS)


def _decode(key: str, value: bytes | None) -> Record | None:
    """Return the record a session string holds, expired or not; ``None`` if none.

    Where a corrupt record reads as no record: everywhere but :meth:`RedisStore.load`.
    """
    if value is None:
        return None
    try:
        return redis_scripts.decode(value)
    except ValueError as exc:
        log.warning("session %s in Redis cannot be decoded (%s); ignored", key[:8], exc)
        return None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _is_live(head: bytes | None, size: object, now: float) -> bool:
    # STRLEN of a key of another type is an error, whose GETRANGE reads as None.
    found = None if head is None or not isinstance(size, int) else redis_scripts.peek(head, size)
    return found is not None and found.expires_at > now and found.version != 0

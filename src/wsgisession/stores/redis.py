"""The Redis store: each session one Redis string, dropped by Redis's own expiry.

Works with a standalone server, a master found through Sentinel, and Redis Cluster.
Every write is one Lua script, so a save is one round trip when nothing raced, and
a load is one ``GET``. The string's layout, the keys' names and the scripts'
arguments are in :mod:`~wsgisession.stores._redis_scripts`, the scripts in
:mod:`~wsgisession.stores._redis_lua`; the steps a write takes on Redis Cluster,
where no script may span the slots of a session, the key it replaces and its
user's set, in :mod:`~wsgisession.stores._redis_cluster`; waiting for a session's
save lock in :mod:`~wsgisession.stores._redis_lock`, and writing as its holder in
:mod:`~wsgisession.stores._redis_locked`; reading many sessions at once
(a user's, or all of them to count) in :mod:`~wsgisession.stores._redis_reads`;
reading a store URL in :mod:`~wsgisession.stores._redis_url`; and the connection the
store keeps for its request path in :mod:`~wsgisession.stores._redis_direct`.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Self

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from .. import _clock
from ..errors import ConfigError
from . import _redis_lua as lua
from . import _redis_reads as reads
from . import _redis_scripts as scripts
from ._redis_cluster import ClusterSteps
from ._redis_direct import Held, pipelined
from ._redis_lock import SaveLock, poll_interval
from ._redis_locked import LockedWrite
from ._redis_url import Client, ClientPlan, check_cluster_prefix, describe, plan_client
from .base import CorruptRecord, LockTimeout, Record, Store, mask_url, translate_errors

__all__ = ["RedisStore"]

log = logging.getLogger("wsgisession")

_ERRORS = (RedisError, RedisClusterException, OSError)


class RedisStore(Store):
    """Keep sessions in Redis: one string per session under ``<key_prefix><key>``.

    The string is a fixed header (format, version, ``created_at``, ``expires_at``,
    ``last_seen``, lengths), then the user id, the meta and the data; see
    :mod:`~wsgisession.stores._redis_scripts`. Anything else under a session's key (a
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
    then writes the new one. There, the user's set is changed after the session: a
    save or refresh whose set update fails raises :exc:`~wsgisession.StoreError`
    although the session was written (its next save or refresh links it again), and a
    failed removal is left for :meth:`user_records`, which drops entries whose
    session is gone or belongs to someone else.

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
        # Whether to keep connections of the client's pool for the request path, one
        # per thread; only from_url says so, for a pool the store made itself.
        self._hold_connection = False
        self._held: Held | None = None
        self._keys = scripts.Keys(key_prefix)
        self._lock = threading.Lock()
        self._client: Client | None = None
        # Whether the client is a RedisCluster: asked on every save, and isinstance()
        # against that class runs a typing Protocol's check, in Python.
        self._on_cluster = False
        self._build: Callable[[], Client] | None = None
        self._name = f"RedisStore({key_prefix!r})"
        self._closers: list[Callable[[], None]] = []
        self._poll = poll_interval(None)
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
        if plan.hold_connection:
            store._keep_connection()
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
        return self._built()

    def _built(self) -> Client:
        """Build the client with the builder given, once, and adopt it."""
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
                value: Any = self._command("GET", self.key_prefix + key)
            except ResponseError as exc:
                if not reads.wrong_type(exc):
                    raise
                raise CorruptRecord(
                    "the Redis key holds another type than a string (an older layout?)"
                ) from None
        if value is None:
            return None
        try:
            record = scripts.decode(value)
        except ValueError as exc:
            raise CorruptRecord(f"the Redis string is no session record: {exc}") from None
        return record if record.expires_at > _clock.now() else None

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
        """Compare the version and write the record in one Lua script, one round trip.

        With *replaces*, the old key is deleted, or overwritten by *tombstone*, in
        the same script (once its version is checked against *replaces_version*, if
        given), except on Redis Cluster, where the two keys live in different slots;
        see :meth:`.ClusterSteps.move`. The user index changes in the same script too,
        except on Redis Cluster, where it changes right after a successful write. The
        script also reads the key's save lock, and writes nothing while a
        :meth:`save_locked` holds it: no extra round trip, one more ``EXISTS``. A
        record of :data:`~wsgisession.stores._redis_scripts.STAGE_AT` bytes or more
        is sent with a plain ``SET`` to a key beside the lock, in the same pipeline as
        the script, which renames it onto *key* (except on Redis Cluster).
        """
        now = _clock.now()
        if expected_version is None and replaces is None and record.user_id is None:
            ttl = scripts.ttl_ms(record.expires_at, now)
            # Only a key holding a record the application's clock has seen expire, which
            # Redis hasn't dropped yet, makes the script necessary.
            if ttl > 0 and self._create(key, record, ttl):
                return True
        keys = [self.key_prefix + key, self._keys.lock(key)]
        cluster = self._cluster()
        replaced = replaces if replaces != key else None
        if cluster and replaced is not None and replaces_version is not None:
            if not self._may_write(key, expected_version, now):
                return False
            return self._steps.move(
                key, record, expected_version, replaced, replaces_version, tombstone, now
            )
        value = scripts.encode(record)
        ttl = scripts.ttl_ms(record.expires_at, now)
        args: list[str | bytes | int] = [
            value,
            scripts.version_arg(expected_version),
            repr(now),
            ttl,
            "" if cluster else self._keys.index,
        ]
        if replaced is not None and not cluster:
            keys.append(self.key_prefix + replaced)
            args += [
                scripts.version_arg(replaces_version),
                *scripts.tombstone_args(tombstone, now),
            ]
        if len(value) < scripts.STAGE_AT or cluster or ttl <= 0:
            answer = self._run(lua.SAVE, keys, args)
        else:
            answer = self._run_staged(key, keys, args, value)
        saved, previous = scripts.save_answer(answer)
        if saved and cluster:
            self._steps.after_save(key, record, previous, replaced, tombstone)
        return saved

    def _create(self, key: str, record: Record, ttl: int) -> bool:
        """Write a new record with no user and nothing to replace: one ``SET NX``.

        No script is needed: nothing else changes (no index entry, no old key), and no
        save lock can be held on a key that holds nothing. ``False`` when the key holds
        anything: the script then decides, since an expired record is overwritten.
        """
        with self._errors():
            created = self._command(
                "SET", self.key_prefix + key, scripts.encode(record), "NX", "PX", ttl
            )
        # OK (as bytes on a held connection, True through the client), or nothing.
        return bool(created)

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
        lock = SaveLock(
            self._run, self._wait, self.key_prefix + key, self._keys.lock(key), poll=self._poll
        )
        writes = LockedWrite(
            self._run, self._keys, cluster=self._cluster(), may_write=self._may_write
        )
        while True:
            taken, value = lock.take(deadline)
            if not taken:
                raise LockTimeout(
                    f"{mask_url(self._name)}: session {key[:8]}… stayed locked for {timeout:g} s"
                )
            done, written = writes.hold(lock, key, value, build, target, tombstone)
            if done:
                return written
            log.warning("session %s: a save lock's lease ran out before its write", key[:8])

    def refresh(
        self, key: str, expires_at: float, last_seen: float, *, version: int | None = None
    ) -> bool:
        """Move a live record's expiry and ``last_seen`` forward, never back."""
        now = _clock.now()
        args: list[str | bytes | int] = [
            repr(now),
            repr(float(expires_at)),
            repr(float(last_seen)),
            scripts.ttl_ms(expires_at, now),
            "" if self._cluster() else self._keys.index,
            scripts.version_arg(version),
        ]
        result: object = self._run(lua.REFRESH, [self.key_prefix + key], args)
        if isinstance(result, bytes):  # on Redis Cluster: the expiry moved, so link it
            self._steps.change_index(result, "link", [(key, float(expires_at))])
        return result != 0

    def delete(self, key: str) -> bool:
        """Remove the record under *key*; ``True`` if a live one was there."""
        if self._cluster():
            return self._steps.delete(key)
        args: list[str | bytes | int] = [repr(_clock.now()), self._keys.index, key]
        result = self._run(lua.DELETE, [self.key_prefix + key], args)
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
        client = self.client
        with self._errors():
            found, stale = reads.read_user(client, self._keys, user_id, _clock.now())
        if stale:
            self._steps.change_index(user_id, "prune", stale, quiet=True)
        return found

    def count(self) -> int:
        """Count live sessions with ``SCAN`` over the prefix (every primary on Cluster).

        This reads every session key's header and length, so it suits the command
        line, not a request. Tombstones are not counted, nor the user sets and save
        locks, nor a string whose header is no record's or whose lengths don't fit.
        """
        now = _clock.now()
        client = self.client
        with self._errors():
            return reads.count_live(client, self._keys, now)

    def close(self) -> None:
        """Close the client's connections (and the Sentinels'); safe to repeat."""
        with self._lock, self._errors():
            client, held = self._client, self._held
            if self._build is not None:
                self._client = self._held = None
            if held is not None:
                held.release()
            if client is not None:
                client.close()
            for closer in self._closers:
                closer()

    def __repr__(self) -> str:
        return f"<RedisStore {self._name}>"

    @property
    def _steps(self) -> ClusterSteps:
        # Made at each use: kept, it would hold the store in a cycle through _run.
        return ClusterSteps(self._run, self._keys)

    def _may_write(self, key: str, expected_version: int | None, now: float) -> bool:
        """Whether a save of *key* expecting *expected_version* would pass its check at *now*."""
        with self._errors():
            try:
                head: Any = self.client.getrange(self.key_prefix + key, 0, scripts.HEADER.size - 1)
            except ResponseError as exc:
                if not reads.wrong_type(exc):
                    raise
                head = b""
        found = scripts.peek(head)
        if found is None or found.expires_at <= now:
            return expected_version is None
        return found.version == expected_version

    def _adopt(self, client: Client) -> None:
        if client.get_encoder().decode_responses:
            raise ConfigError(
                "RedisStore needs a client with decode_responses=False: sessions are bytes"
            )
        cluster = isinstance(client, RedisCluster)
        if cluster:
            check_cluster_prefix(self.key_prefix, self._name)
        self._poll = poll_interval(client.get_connection_kwargs().get("socket_timeout"))
        self._on_cluster = cluster
        self._client = client
        if self._hold_connection:
            self._keep_connection()

    def _keep_connection(self) -> None:
        """Keep a connection of the client's pool for each thread's request-path
        commands, if the client suits (see :mod:`~wsgisession.stores._redis_direct`)."""
        self._hold_connection = True
        client = self._client
        if Held.suits(client):
            self._held = Held(client)

    def _run(
        self,
        script: lua.Script,
        keys: Sequence[str],
        args: Sequence[str | bytes | int],
    ) -> Any:
        """Run *script* by its SHA1, loading it first if the server does not know it."""
        with self._translator:
            try:
                return self._command("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                # A server that restarted, failed over or was never sent it.
                self._command("SCRIPT LOAD", script.source)
                return self._command("EVALSHA", script.sha, len(keys), *keys, *args)

    def _command(self, *args: Any) -> Any:
        """Send one command of the request path; return the server's reply as it came."""
        held = self._held
        if held is not None:
            return held.execute(*args)
        return self.client.execute_command(*args)  # type: ignore[no-untyped-call,unused-ignore]

    def _pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send *commands* of the request path in one non-transactional pipeline; return
        their replies, an error reply as its exception, in its place."""
        held = self._held
        if held is not None:
            return held.pipeline(*commands)
        return pipelined(self.client, commands)

    def _run_staged(
        self, key: str, keys: list[str], args: list[str | bytes | int], value: bytes
    ) -> Any:
        """Run ``SAVE`` with the record *value* staged: ``SET``, ``EVALSHA``, one pipeline.

        *keys* and *args* are those of an unstaged save, *value* first; see
        :data:`~wsgisession.stores._redis_scripts.STAGE_AT`.
        """
        stage = self._keys.stage(key, secrets.token_hex(8))
        args = [scripts.head(value), *args[1:]]
        if len(keys) == 2:  # no replaced key: its three arguments, as the stage's name follows
            args += [b"", *scripts.tombstone_args(None, 0.0)]
        args.append(stage)
        commands = (
            ("SET", stage, value, "PX", scripts.STAGE_TTL_MS),
            ("EVALSHA", lua.SAVE.sha, len(keys), *keys, *args),
        )
        with self._errors():
            staged, answer = self._pipeline(*commands)
            if isinstance(staged, Exception):
                raise staged
            if isinstance(answer, NoScriptError):
                # The staged record waits for the script, which is loaded and run alone.
                return self._run(lua.SAVE, keys, args)
            if isinstance(answer, Exception):
                raise answer
            return answer

    def _wait(self, baton: str, seconds: float) -> None:
        with self._errors():
            self.client.blpop([baton], timeout=seconds)

    def _cluster(self) -> bool:
        if self._client is None:
            self._built()
        return self._on_cluster

    def _errors(self) -> AbstractContextManager[None]:
        return self._translator

    @property
    def _name(self) -> str:
        """How messages name the store: its masked URL, or what its client shows."""
        return self._shown

    @_name.setter
    def _name(self, name: str) -> None:
        self._shown = name
        # Entered on every call, and it keeps no state of its own: made once.
        self._translator = translate_errors(name, *_ERRORS)

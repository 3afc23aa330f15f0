"""Reading many of a Redis store's sessions at once, and telling a record from none.

:meth:`~wsgisession.stores.redis.RedisStore.user_records` reads a user's sorted set,
then every session it names in one pipeline; :meth:`~wsgisession.stores.redis.
RedisStore.count` walks the store's keys with ``SCAN`` and reads each one's header
and length, a pipeline per batch. Both are here, with the rules they share with the
rest of the store: a key of another type than a string reads as no record, and a
string in no known layout is logged and skipped, never quoted. Errors are the
driver's: the store translates them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Final

from redis.exceptions import ResponseError

from . import _redis_scripts as scripts
from ._redis_url import Client
from .base import Record

__all__ = ["count_live", "decode_quietly", "read_user", "strings", "wrong_type"]

log = logging.getLogger("wsgisession")

_COUNT_BATCH: Final = 500


def decode_quietly(key: str, value: bytes | None) -> Record | None:
    """Return the record a session string holds, expired or not; ``None`` if none.

    Where a corrupt record reads as no record: everywhere but
    :meth:`~wsgisession.stores.redis.RedisStore.load`.
    """
    if value is None:
        return None
    try:
        return scripts.decode(value)
    except ValueError as exc:
        log.warning("session %s in Redis cannot be decoded (%s); ignored", key[:8], exc)
        return None


def wrong_type(exc: ResponseError) -> bool:
    """Whether *exc* says the key holds another type than the command reads."""
    return str(exc).startswith("WRONGTYPE")


def strings(replies: list[Any]) -> list[bytes | None]:
    """Turn a pipeline's replies to string reads of session keys into strings.

    A key of another type reads as ``None``, like a missing one; any other error is
    raised.
    """
    values: list[bytes | None] = []
    for reply in replies:
        if isinstance(reply, ResponseError):
            if not wrong_type(reply):
                raise reply
            reply = None
        values.append(reply)
    return values


def read_user(
    client: Client, keys: scripts.Keys, user_id: str, now: float
) -> tuple[list[tuple[str, Record]], list[tuple[str | bytes, float]]]:
    """Return a user's live records and the set's entries that name no such record.

    The set is read from ``now`` on, then every session it names with one pipelined
    ``GET``. An entry is live only if its session is there, not expired and still
    *user_id*'s; the others come back as ``(member, score)`` for the caller to
    prune.
    """
    answer: Any = client.zrangebyscore(keys.user(user_id), f"({now!r}", "+inf", withscores=True)
    entries: list[tuple[bytes, float]] = [(m, float(s)) for m, s in answer]
    if not entries:
        return [], []
    pipe = client.pipeline(transaction=False)
    prefix = keys.prefix.encode()
    for member, _ in entries:
        pipe.get(prefix + member)
    values = strings(pipe.execute(raise_on_error=False))
    pipe.reset()
    found: list[tuple[str, Record]] = []
    stale: list[tuple[str | bytes, float]] = []
    for (member, score), value in zip(entries, values, strict=True):
        key = member.decode(errors="replace")
        record = decode_quietly(key, value)
        if record is not None and record.expires_at > now and record.user_id == user_id:
            found.append((key, record))
        else:
            stale.append((member, score))
    return found, stale


def count_live(client: Client, keys: scripts.Keys, now: float) -> int:
    """Count the live sessions under *keys*' prefix, leaving out tombstones.

    The user sets and save locks are skipped by name, and a string whose header is
    no record's, or whose lengths don't fit in it, is not counted.
    """
    total = 0
    batch: list[bytes] = []
    skipped = (keys.index.encode(), keys.locks.encode())
    for name in _scan(client, keys.prefix):
        if name.startswith(skipped):
            continue
        batch.append(name)
        if len(batch) >= _COUNT_BATCH:
            total += _count_batch(client, batch, now)
            batch = []
    return total + _count_batch(client, batch, now)


def _scan(client: Client, prefix: str) -> Iterator[bytes]:
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
    names: Iterator[bytes] = client.scan_iter(match=pattern, count=_COUNT_BATCH)
    return names


def _count_batch(client: Client, names: list[bytes], now: float) -> int:
    if not names:
        return 0
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.getrange(name, 0, scripts.HEADER.size - 1)
        pipe.strlen(name)
    replies = pipe.execute(raise_on_error=False)
    pipe.reset()
    heads = strings(replies[::2])
    return sum(
        1 for head, size in zip(heads, replies[1::2], strict=True) if _is_live(head, size, now)
    )


def _is_live(head: bytes | None, size: object, now: float) -> bool:
    # STRLEN of a key of another type is an error, whose GETRANGE reads as None.
    found = None if head is None or not isinstance(size, int) else scripts.peek(head, size)
    return found is not None and found.expires_at > now and found.version != 0

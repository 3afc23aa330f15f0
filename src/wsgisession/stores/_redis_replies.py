"""How :class:`~wsgisession.stores.redis.RedisStore` reads what redis-py answers.

Kept apart because both :mod:`wsgisession.stores.redis` and its Cluster steps in
:mod:`wsgisession.stores._redis_cluster` read the same replies: a script's answer
naming a user, a ``WRONGTYPE`` error, a pipeline's list of string reads.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

__all__ = ["strings", "user_of", "wrong_type"]


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


def user_of(value: object) -> bytes | None:
    """Return the user id a script answered, as stored, or ``None`` for nil."""
    return value if isinstance(value, bytes) else None

"""A user's sessions: listing them and ending them, over any store's user index."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from ._snapshot import client_details
from .stores.base import CorruptRecord, Record, Store

__all__ = [
    "MAX_USER_ID",
    "SessionInfo",
    "check_user_id",
    "end_listed",
    "is_handle",
    "list_user_sessions",
]

_HANDLE: Final = re.compile(r"[0-9a-f]{64}")

#: The longest user id, in characters; the SQL store's column holds this many.
MAX_USER_ID: Final = 256
# C0 and C1 control characters and DEL: NUL ends strings in C drivers and PostgreSQL
# refuses it; the others have no place in an identifier and hide in logs.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_user_id(value: object) -> str:
    """Return *value* if it can be a user id on every store, else raise.

    A user id is a non-empty ``str`` of at most :data:`MAX_USER_ID` characters, of
    valid Unicode, without control characters (NUL included), the same on every store.

    :raises TypeError: It is not a ``str``.
    :raises ValueError: It is empty, too long, holds a control character or is not
        valid Unicode (a lone surrogate). The message never quotes the value.
    """
    if not isinstance(value, str):
        raise TypeError(f"a user id must be a str, got {type(value).__name__}")
    if not value or len(value) > MAX_USER_ID:
        raise ValueError(f"a user id must be 1 to {MAX_USER_ID} characters, got {len(value)}")
    control = _CONTROL.search(value)
    if control is not None:
        raise ValueError(
            f"a user id must not hold control characters; character {control.start() + 1} "
            f"is U+{ord(control.group()):04X}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a user id must be valid Unicode (it has a lone surrogate)") from None
    return value


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One of a user's live sessions, as ``SessionMiddleware.user_sessions()`` lists it.

    ``handle`` identifies the session to :meth:`SessionMiddleware.end_session` and in
    events; it is the SHA-256 the store files the session under, so it can't be
    turned back into a cookie. ``user_agent`` and ``remote_addr`` are ``None`` unless
    ``track_clients`` was on when the session was last saved.
    """

    handle: str
    created_at: float
    last_seen: float
    expires_at: float
    remembered: bool
    user_agent: str | None = None
    remote_addr: str | None = None


def is_handle(value: object) -> bool:
    """Return whether *value* has the shape of a session handle."""
    return isinstance(value, str) and _HANDLE.fullmatch(value) is not None


def session_info(handle: str, record: Record) -> SessionInfo:
    """Describe the session stored as *record* under *handle*."""
    remembered, user_agent, remote_addr = client_details(record.meta)
    return SessionInfo(
        handle=handle,
        created_at=record.created_at,
        last_seen=record.last_seen,
        expires_at=record.expires_at,
        remembered=remembered,
        user_agent=user_agent,
        remote_addr=remote_addr,
    )


def list_user_sessions(
    store: Store, user_id: str, now: float, absolute_timeout: int | None = None
) -> list[SessionInfo]:
    """Return *user_id*'s sessions live at *now*, newest ``created_at`` first.

    *absolute_timeout* is the option's value: a session older than that is over even
    if its record, written before the option was set or lowered, expires later.

    :raises ValueError: *user_id* can't be a user id (:func:`check_user_id`).
    """
    check_user_id(user_id)
    born_after = -math.inf if absolute_timeout is None else now - absolute_timeout
    infos = [
        session_info(key, record)
        for key, record in store.user_records(user_id)
        if record.expires_at > now and record.created_at > born_after and record.user_id == user_id
    ]
    infos.sort(key=lambda info: info.created_at, reverse=True)
    return infos


def end_listed(store: Store, handle: str) -> bool:
    """End the session *handle* names, from outside it (the command line); ``True`` if
    it was live.

    A tombstone is left alone: its session moved to a new id the store can't name, and
    a request still carrying the old cookie must find it, or its response would replace
    the browser's new cookie (as :meth:`SessionMiddleware.end_session` leaves it).
    """
    try:
        record = store.load(handle)
    except CorruptRecord:
        return store.delete(handle)  # no tombstone, and nothing of it to keep
    if record is None or record.version == 0:
        return False
    return store.delete(handle)

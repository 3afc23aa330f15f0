"""A user's sessions: listing them and ending them, over any store's user index."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final

from .stores.base import Record, Store

__all__ = ["SessionInfo", "is_handle", "list_user_sessions"]

_HANDLE: Final = re.compile(r"[0-9a-f]{64}")


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
    try:
        meta = json.loads(record.meta) if record.meta else {}
    except ValueError:
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    user_agent, remote_addr = meta.get("ua"), meta.get("ra")
    return SessionInfo(
        handle=handle,
        created_at=record.created_at,
        last_seen=record.last_seen,
        expires_at=record.expires_at,
        remembered=bool(meta.get("r")),
        user_agent=user_agent if isinstance(user_agent, str) else None,
        remote_addr=remote_addr if isinstance(remote_addr, str) else None,
    )


def list_user_sessions(store: Store, user_id: str, now: float) -> list[SessionInfo]:
    """Return *user_id*'s sessions live at *now*, newest ``created_at`` first."""
    infos = [
        session_info(key, record)
        for key, record in store.user_records(user_id)
        if record.expires_at > now and record.user_id == user_id
    ]
    infos.sort(key=lambda info: info.created_at, reverse=True)
    return infos

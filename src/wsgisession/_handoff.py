"""What a request hands the saver, and what the saver hands back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Literal, NamedTuple

from ._changes import Step
from ._snapshot import Snapshot

__all__ = ["Absence", "Change", "Client", "Stored"]

#: Why a validly signed cookie finds no session: it expired or was ended ("gone"),
#: its record is undecodable ("corrupt"), ``bind_ip`` refused it ("foreign"), or it
#: was regenerated less than ``regenerate_grace`` ago ("moved").
Absence = Literal["gone", "corrupt", "foreign", "moved"]


class Client(NamedTuple):
    """What a record keeps about the client: the address ``bind_ip`` binds to, and the
    user agent and address ``track_clients`` lists."""

    bound_ip: str | None
    user_agent: str | None
    remote_addr: str | None


class Change(NamedTuple):
    """What one request did to its session, as a save applies it to the stored record.

    ``data`` and ``deadlines`` are the request's view of the session (per-key
    deadlines, Unix times), read during the save; only the keys in ``changed`` and
    ``deleted`` are written over what the store holds. ``forced`` (``modified = True``)
    adds every key whose value differs from what was loaded. ``steps`` are
    ``apply()`` operations, replayed in order onto what the store holds at each attempt
    of the save.
    """

    #: What the request loaded; ``None`` for a session this request started.
    base: Snapshot | None
    #: The id the session is to be stored under: the loaded one, or after
    #: ``regenerate()`` a new one; ``None`` for a new session, which draws its own.
    session_id: str | None
    data: Mapping[str, Any]
    deadlines: Mapping[str, float]
    changed: AbstractSet[str]
    deleted: AbstractSet[str]
    forced: bool
    #: The remember-me flag, if this request changed it.
    remember: bool | None
    #: The user, if this request changed it (``None`` then unlinks).
    user_id: str | None
    user_changed: bool
    created_at: float
    client: Client
    #: Whether ``regenerate()`` gave a stored session a new id to move to.
    moving: bool = False
    #: A corrupt record the request's cookie named, deleted when a new session is stored.
    stale_key: str | None = None
    #: ``apply()`` operations on keys not in ``changed`` or ``deleted``, in order.
    steps: Sequence[Step] = ()
    #: The snapshot ``data`` was copied from, which a forced save compares it with,
    #: when it is not *base*: ``pop_flashes()`` saved since, and *base* holds what
    #: other requests wrote meanwhile too.
    loaded: Snapshot | None = None


class Stored(NamedTuple):
    """What a save wrote: the id the session is stored under and its new snapshot."""

    session_id: str
    snapshot: Snapshot

"""A session as stored, decoded: its snapshot, the meta blob beside its data, and merging.

``Record.data`` is the serializer's output of the session's keys. ``Record.meta`` is a
small JSON object the middleware keeps beside it, in a format of its own so that it is
readable whatever the serializer: the format version, the remember-me flag, the address
a ``bind_ip`` session is bound to, per-key deadlines, and client details for
``user_sessions()``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Final, NamedTuple

import orjson

from ._changes import Step, replay
from ._expiry import key_live
from .stores.base import Record

__all__ = [
    "META_FORMAT",
    "PLAIN_META",
    "RecordText",
    "Snapshot",
    "client_details",
    "compact_json",
    "decode_meta",
    "encode_meta",
    "merge",
    "read_json",
]

#: The format of ``Record.meta``; a record of another format is a missing session.
META_FORMAT: Final = 1
# The meta of most records (not remembered, no key timeouts, no client details), which
# needs no JSON either way.
PLAIN_META: Final = json.dumps({"v": META_FORMAT}, separators=(",", ":")).encode()

# What a key's deadline may be in the meta (a tuple: a union is built each time it's named).
_NUMBERS: Final = (int, float)

#: Longest ``User-Agent`` kept for ``user_sessions()``.
MAX_USER_AGENT: Final = 200


class Snapshot(NamedTuple):
    """A stored record, decoded: the base a request's changes are merged onto."""

    #: The raw id the record is stored under, which (with the secret key) opens its
    #: sealed data.
    session_id: str
    key: str
    record: Record
    data: dict[str, Any]
    deadlines: dict[str, float]
    remember: bool
    ip: str | None
    #: The serializer's bytes *data* was decoded from, opened, when a later save can
    #: use them (see ``Codec``); ``None`` for a snapshot made by a save.
    text: RecordText | None = None
    #: Whether a save should seal the record again now: only a ``secret_key_fallbacks``
    #: key opened it, and it is within ``max_size`` (lowered since, a save would fail).
    reseal: bool = False


class RecordText:
    """A record's serialized data, opened, and the per-key parts taken from it once.

    :param text: The serializer's bytes.
    :param split: Takes *text* apart per top-level key, or returns ``None``.
    :param apart: The seals of the values the record sealed apart from the rest, by
        key (see ``Codec``), which a save may copy while those values are unchanged.
    """

    __slots__ = ("_parts", "_split", "_taken", "apart", "text")

    def __init__(
        self,
        text: bytes,
        split: Callable[[bytes], Mapping[str, Any] | None],
        apart: Mapping[str, bytes | memoryview] | None = None,
    ) -> None:
        self.text = text
        self.apart: Mapping[str, bytes | memoryview] = {} if apart is None else apart
        self._split = split
        self._taken = False
        self._parts: Mapping[str, Any] | None = None

    def parts(self) -> Mapping[str, Any] | None:
        """The encoding of each key's value, taken apart on the first call; ``None``
        when the serializer can't take this record apart."""
        if not self._taken:
            self._parts = self._split(self.text)
            self._taken = True
        return self._parts


def encode_meta(
    remember: bool,
    ip: str | None,
    deadlines: Mapping[str, float] | Sequence[float],
    user_agent: str | None = None,
    remote_addr: str | None = None,
) -> bytes:
    """Return the meta blob of a record; absent details are left out, not written empty.

    *deadlines* maps keys to their deadlines; a sealed record keeps only the times here,
    in the order of the key names sealed with its data.
    """
    meta: dict[str, Any] = {"v": META_FORMAT}
    if remember:
        meta["r"] = 1
    if ip is not None:
        meta["ip"] = ip
    if deadlines:
        meta["t"] = deadlines
    if user_agent:
        meta["ua"] = str(user_agent)[:MAX_USER_AGENT]
    if remote_addr:
        meta["ra"] = remote_addr
    if len(meta) == 1:
        return PLAIN_META
    return compact_json(meta)


def compact_json(obj: dict[str, Any]) -> bytes:
    """*obj*, a dict of strings, numbers and lists of them, as compact JSON.

    orjson writes it some twenty times faster than :func:`json.dumps`; a string it
    refuses (a lone surrogate, which a server's environ may hold) goes through
    :func:`json.dumps`, which escapes it.
    """
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def read_json(blob: bytes) -> Any:
    """What :func:`compact_json` wrote: orjson reads it, unless it holds an escaped
    lone surrogate, which only :func:`json.loads` takes.

    :raises ValueError: *blob* is not JSON.
    """
    try:
        return orjson.loads(blob)
    except orjson.JSONDecodeError:
        return json.loads(blob)


def decode_meta(blob: bytes) -> tuple[dict[str, float] | list[float], bool, str | None]:
    """Return the key deadlines, the remember-me flag and the bound address in *blob*.

    The deadlines are a mapping of key to time, or for a sealed record only the times.

    :raises ValueError: *blob* is not meta of :data:`META_FORMAT`.
    """
    if blob == PLAIN_META:
        return {}, False, None
    meta = read_json(blob) if blob else None
    if not isinstance(meta, dict) or meta.get("v") != META_FORMAT:
        raise ValueError("unknown record format")
    if "t" in meta and not _are_times(meta["t"]):
        raise ValueError("malformed key timeouts")
    return meta.get("t", {}), bool(meta.get("r")), meta.get("ip")


def _are_times(deadlines: object) -> bool:
    """Whether *deadlines*, from a meta blob, are key deadlines: times by key, or times."""
    times: Iterable[object]
    if isinstance(deadlines, dict):
        times = deadlines.values()
    elif isinstance(deadlines, list):
        times = deadlines
    else:
        return False
    return all(isinstance(t, _NUMBERS) for t in times)


def client_details(blob: bytes) -> tuple[bool, str | None, str | None]:
    """Return the remember-me flag, user agent and address a meta blob records.

    Lenient, for listings: a blob that can't be read describes nothing.
    """
    try:
        meta = read_json(blob) if blob else {}
    except ValueError:
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    agent, address = meta.get("ua"), meta.get("ra")
    return (
        bool(meta.get("r")),
        agent if isinstance(agent, str) else None,
        address if isinstance(address, str) else None,
    )


def merge(
    base: Snapshot,
    data_now: Mapping[str, Any],
    deadlines_now: Mapping[str, float],
    changed: AbstractSet[str],
    deleted: AbstractSet[str],
    now: float,
    steps: Sequence[Step] = (),
) -> tuple[dict[str, Any], dict[str, float]]:
    """Apply a request's *changed* and *deleted* keys and its *steps* on top of *base*.

    *data_now* and *deadlines_now* are the request's view of the session; keys whose
    deadline has passed by *now* are left out of the result. The steps run on what
    *base* holds, except on keys the request wrote whole.
    """
    data = dict(base.data)
    deadlines = dict(base.deadlines)
    if steps:
        replay(data, deadlines, steps, changed | deleted, now)
    for key in deleted:
        data.pop(key, None)
        deadlines.pop(key, None)
    for key in changed:
        data[key] = data_now[key]
        if key in deadlines_now:
            deadlines[key] = deadlines_now[key]
        else:
            deadlines.pop(key, None)
    for key, deadline in list(deadlines.items()):
        if not key_live(deadline, now) or key not in data:
            data.pop(key, None)
            del deadlines[key]
    return data, deadlines

"""Writes that compose: operations a save re-applies to the value the store holds then.

A whole-value write (``s[k] = v``) is merged by key, so on one key the later save wins.
:meth:`Session.apply` instead records a :class:`Step`, the function itself, and every
save, retry or fallback of the save replays the steps onto what is stored at that
moment, in the order the handler made them, so concurrent ``incr`` and ``append`` calls
all count. Flash messages are entries of a list under :data:`FLASHES_KEY`, each with an
id, so that taking them (:class:`Claim`) removes exactly the ones a request showed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Final, NamedTuple

from ._expiry import key_live

__all__ = [
    "FLASHES_KEY",
    "REMOVE",
    "Claim",
    "Step",
    "AppendItem",
    "entry_ids",
    "flash_entry",
    "flash_pairs",
    "Increment",
    "is_entry",
    "replay",
]

#: The session key that holds queued flash messages, as ``[id, category, message]``.
FLASHES_KEY: Final = "_flashes"


class _Remove:
    def __repr__(self) -> str:
        return "REMOVE"


#: What a step returns to remove its key, as :class:`Claim` does once no message is left.
REMOVE: Final = _Remove()


class Step(NamedTuple):
    """One operation on one key: set it to ``fn(current)``, ``default`` when missing."""

    key: str
    fn: Callable[[Any], Any]
    default: Any


def replay(
    data: dict[str, Any],
    deadlines: dict[str, float],
    steps: Sequence[Step],
    written: AbstractSet[str],
    now: float,
) -> None:
    """Apply *steps* in order to *data*, a stored session's keys, in place.

    Keys in *written* are skipped: a whole-value write to a key in the same request
    wins over the operations made on it before, and the ones made after it already
    shaped the written value. A key whose timeout has passed counts as missing, and
    loses its timeout when a step gives it a value.
    """
    for key, fn, default in steps:
        if key in written:
            continue
        deadline = deadlines.get(key)
        if deadline is not None and not key_live(deadline, now):
            del deadlines[key]
            data.pop(key, None)
        value = fn(data[key] if key in data else default)
        if value is REMOVE:
            data.pop(key, None)
            deadlines.pop(key, None)
        else:
            data[key] = value


class Increment:
    """``v + n``: the step of :meth:`Session.incr`, a class so that it has a readable repr."""

    __slots__ = ("n",)

    def __init__(self, n: Any) -> None:
        self.n = n

    def __call__(self, value: Any) -> Any:
        return value + self.n

    def __repr__(self) -> str:
        return f"Increment({self.n!r})"


class AppendItem:
    """``[*v, item]``: the step of :meth:`Session.append`; a new list, never the old one."""

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item

    def __call__(self, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise TypeError(f"append() needs a list under its key, found {type(value).__name__}")
        return [*value, self.item]

    def __repr__(self) -> str:
        return f"AppendItem({self.item!r})"


def flash_entry(message: Any, category: str) -> list[Any]:
    """A queued flash message: a fresh id (so it can be taken exactly once) and its text."""
    return [secrets.token_hex(8), category, message]


def is_entry(entry: Any) -> bool:
    """Whether *entry* is a well-formed flash entry: ``[id, category, message]``."""
    return isinstance(entry, list | tuple) and len(entry) == 3 and isinstance(entry[0], str)


def flash_pairs(entries: Iterable[Any]) -> list[tuple[str, Any]]:
    """``(category, message)`` for each well-formed entry of *entries*, oldest first."""
    return [(entry[1], entry[2]) for entry in entries if is_entry(entry)]


class Claim:
    """The step that takes flash messages: it removes the entries whose ids it was given.

    It may run more than once (each save attempt replays it); ``taken`` holds what the
    last run removed, which is what the save that landed took from the store. Once no
    message is left, the key goes too.
    """

    __slots__ = ("ids", "taken")

    def __init__(self, ids: AbstractSet[str]) -> None:
        self.ids = ids
        self.taken: list[Any] = []

    def __call__(self, value: Any) -> Any:
        entries = value if isinstance(value, list | tuple) else []
        self.taken = [e for e in entries if is_entry(e) and e[0] in self.ids]
        left = [e for e in entries if not (is_entry(e) and e[0] in self.ids)]
        return left if left else REMOVE

    def __repr__(self) -> str:
        return f"Claim({sorted(self.ids)!r})"


def entry_ids(entries: Any) -> set[str]:
    """The ids of the well-formed flash entries in *entries*."""
    if not isinstance(entries, list | tuple):
        return set()
    return {e[0] for e in entries if is_entry(e)}

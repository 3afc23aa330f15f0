"""Plain JSON records: sessions of JSON's own types, encoded and decoded in C.

Most sessions hold nothing but dicts, lists, strings, numbers, booleans and ``None``.
For them the JSON serializer's tags are not needed, and orjson encodes and decodes the
whole session in C. orjson also writes a few other types without a word (a tuple as an
array, a UUID as a string, NaN as ``null``), which would come back as something else:
a session is only written plain after a census of its objects, also in C, has found
nothing but the types above and finite floats.

A plain record begins with :data:`MARK`, a space. Its top-level values can be taken
apart without decoding them (:func:`parts`), so that a save re-encodes only the keys
that changed and copies the others from the record it was loaded from.
"""

from __future__ import annotations

import gc
import math
import operator
from collections.abc import Mapping, Sequence
from itertools import compress, repeat
from typing import Any, Final, TypeAlias

import msgspec
import orjson

__all__ = [
    "MARK",
    "Part",
    "Walk",
    "dumps",
    "dumps_cut",
    "encodes_as",
    "is_record",
    "loads",
    "parts",
    "parts_around",
    "walk",
]

#: The first byte of a plain record: JSON whitespace, so the record is still JSON text.
MARK: Final = b" "

#: One top-level value's encoding, as :func:`parts` gives it: bytes-like.
Part: TypeAlias = bytes | msgspec.Raw

#: The objects a value decoded from a plain record is made of, level by level, as
#: :func:`walk` finds them.
Walk: TypeAlias = list[list[Any]]

# The types orjson writes as JSON reads them back. Subclasses (an IntEnum, an
# OrderedDict), datetimes and dataclasses are handed back to us by the options below,
# as a TypeError; the tagged encoder takes those.
_PLAIN_TYPES: Final = frozenset({dict, list, str, int, float, bool, type(None)})
# The plain types that hold nothing and need no check of their value (floats do).
_LEAVES: Final = frozenset({str, int, bool, type(None)})
_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_SPLIT: Final = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


def is_plain(obj: Any, text: bytes) -> bool:
    """Whether *obj*, which orjson encoded as *text*, holds only the plain types and
    finite floats, so that *text* decodes to an exact copy of it.

    It walks the objects level by level with :func:`gc.get_referents`, the loops in
    C, where the tagged encoder walks them in Python. orjson writes NaN and
    infinity as ``null``: a value with floats, but without ``None`` and without
    ``null`` in its text, has neither, and only otherwise are its floats checked.
    """
    kind = type(obj)
    if kind is dict:
        # The common session, and a common value: one level of strings, integers,
        # booleans and None, checked without the walk's sets and lists (half the time).
        if _LEAVES.issuperset(map(type, obj.values())) and _LEAVES.issuperset(map(type, obj)):
            return True
    elif kind in _LEAVES:
        return True
    found = [obj]
    with_floats: list[list[Any]] = []
    nones = False
    while found:
        types = set(map(type, found))
        if not _PLAIN_TYPES.issuperset(types):
            return False
        if float in types:
            with_floats.append(found)
        nones = nones or type(None) in types
        found = gc.get_referents(*found)
    if with_floats and (nones or b"null" in text):
        return all(map(_finite, with_floats))
    return True


def _finite(found: list[Any]) -> bool:
    floats = compress(found, map(operator.is_, map(type, found), repeat(float)))
    return all(map(math.isfinite, floats))


def _encode(value: Any) -> bytes | None:
    """*value* in plain JSON, or ``None`` if it can't be written plain."""
    try:
        text = orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        return None  # a type orjson doesn't take, a non-str key, a huge int, deep nesting
    return text if is_plain(value, text) else None


def dumps(obj: Any, reuse: Mapping[str, Part] | None = None) -> bytes | None:
    """The plain record of *obj*, or ``None`` if it holds anything but plain values.

    *reuse* maps keys of *obj* (a dict) to their values' encodings in a plain record,
    taken as they are: the caller vouches that those values have not changed.
    """
    if not reuse:
        text = _encode(obj)
        return None if text is None else MARK + text
    cut = dumps_cut(obj, reuse, None)
    return None if cut is None else cut[0]


def dumps_cut(
    obj: Any, reuse: Mapping[str, Part], cut_from: int | None
) -> tuple[bytes, list[tuple[str, int, Part]]] | None:
    """The plain record of the dict *obj*, as :func:`dumps` writes it with *reuse*, but
    with the values whose encoding is *cut_from* bytes or more left out; ``None`` if
    *obj* holds anything but plain values.

    Returns the record without them, and each value left out as its key, the offset
    in that record where its encoding belongs, and the encoding.
    """
    if type(obj) is not dict:
        return None
    pieces = [MARK, b"{"]
    size = 2
    cuts: list[tuple[str, int, Part]] = []
    for key, value in obj.items():
        part = reuse.get(key)
        if part is None:
            part = _encode(value)
        name = _encode(key) if type(key) is str else None  # a lone surrogate can't be
        if part is None or name is None:
            return None
        if size > 2:
            pieces.append(b",")
            size += 1
        pieces += (name, b":")
        size += len(name) + 1
        if cut_from is not None and len(part) >= cut_from:
            cuts.append((key, size, part))
        else:
            pieces.append(part)
            size += len(part)
    pieces.append(b"}")
    return b"".join(pieces), cuts


def loads(data: bytes) -> Any:
    """Decode a plain record; :exc:`ValueError` (orjson's ``JSONDecodeError``) if it
    is not JSON."""
    return orjson.loads(data)


def is_record(data: bytes) -> bool:
    """Whether *data* is a plain record, all of whose values are plain."""
    return data[:1] == MARK


def parts(data: bytes) -> Mapping[str, Part] | None:
    """The encoding of each top-level value of the plain record *data*, or ``None`` if
    *data* is not a plain record of a JSON object."""
    if not is_record(data):
        return None
    try:
        return _SPLIT(data)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return None  # not JSON, not an object; the record is then compared decoded


def parts_around(
    around: Sequence[bytes | memoryview], values: Mapping[str, Part]
) -> Mapping[str, Part] | None:
    """The encoding of each top-level value of a plain record given as *values*, the
    encodings of some of its values by key, and *around*, the pieces of the record
    between them; ``None`` if they make no plain record.

    Only the text around is scanned, with ``0`` in each value's place: taking a record
    apart otherwise means reading through every value, the big ones included.
    """
    found = parts(b"0".join(around))
    if found is None or not values.keys() <= found.keys():
        return None
    return {**found, **values}


def walk(value: Any) -> Walk:
    """The objects *value*, decoded from a plain record, is made of: itself, what it
    holds, what that holds, and so on, level by level.

    Taken when a handler first gets a container from the session, it lets
    :func:`encodes_as` tell that the value is still made of those very objects, all
    plain, for a fraction of a census. Only for plain values: an instance of a class of
    Python code holds its class, and walking on would reach every object there is.
    """
    levels = [[value]]
    found = gc.get_referents(value)
    while found:
        levels.append(found)
        found = gc.get_referents(*found)
    return levels


def _made_of(value: Any, walked: Walk) -> bool:
    # Level by level, stopping at the first that differs, so that an object of another
    # class put in is never walked into. Lists compare identical objects as equal at
    # once; an object put in place of another compares by value, and a value of another
    # type equal to a plain one is one orjson refuses (a subclass, a Decimal) or writes
    # differently (True for 1, 1.0 for 1), except an Enum member made to equal its value.
    found = [value]
    try:
        for level in walked:
            if found != level:
                return False
            found = gc.get_referents(*found)
    except Exception:  # an __eq__ of the handler's that raises: let the census judge
        return False
    return not found


def encodes_as(value: Any, part: Part, walked: Walk | None = None) -> bool:
    """Whether *value* is plain and encodes exactly as *part*: the value a plain
    record's part decodes to, and nothing else (not a tuple for a list, nor a UUID for
    its string).

    *walked* is what :func:`walk` found in the value as it was decoded from *part*: a
    value still made of the same objects is plain without a census of its types.
    """
    try:
        text = orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        return False
    # Most values read are unchanged: the types are checked only once the texts match.
    # (A memoryview compares item by item; a copy and a bytes compare is fifty times
    # faster.)
    if bytes(part) != text:
        return False
    return (walked is not None and _made_of(value, walked)) or is_plain(value, text)

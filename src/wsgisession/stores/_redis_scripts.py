"""The Redis store's session string, and the Lua scripts that read and change it.

Every write of :class:`~wsgisession.stores.redis.RedisStore` is one of these
scripts, so that it is one round trip. Each session is one Redis string: a fixed
header, then the user id, the meta and the data. The header is, big-endian: the 4
bytes ``wsr1``, the version (8-byte signed integer), then ``created_at``,
``expires_at`` and ``last_seen`` (8-byte doubles), the user id's length in bytes
(4-byte signed integer, ``-1`` when the session has no user) and the meta's length
(4-byte unsigned integer). A load is one ``GET`` whose reply is a single string,
which redis-py parses far more cheaply than a hash's fields. The scripts read only
the header and the user id, with ``GETRANGE``, so checking a stored record costs the
same whatever its size, and a refresh rewrites the two times in place with
``SETRANGE``. A value that is not a string in this layout (a hash from before, or
anything else) is treated as absent by the scripts, and :func:`decode` refuses it;
the messages of its errors say what is wrong with a value, never what the value
holds.

Expiry is judged by the application's clock, so every script takes the caller's
:func:`wsgisession._clock.now` as ``now`` and treats a record whose ``expires_at``
is not after it as absent, whatever TTL Redis still gives it. Redis's own TTL is set
relative to that same ``now``, so Redis drops a record when the application's clock
reaches ``expires_at``, even if the two clocks disagree. Every TTL given to Redis is
at most :data:`MAX_TTL_MS`: a record meant to live longer is dropped by Redis then,
and till then ``expires_at`` decides.

The user index is one sorted set per user under ``<prefix>u:<hex of the user id's
UTF-8>``, whose members are store keys (without the prefix) scored by their
session's ``expires_at``. Every script that changes a set drops its members that
expired by ``now`` and sets the set's TTL to its latest member's expiry. A session
without a user, now or before, never touches a set.

``SAVE``, ``REFRESH`` and ``DELETE`` take the index prefix (``<prefix>u:``) as an
argument. When it is not empty (a standalone server or a Sentinel master), they
change the user sets themselves, in the same script as the session: they build a
set's name from the user id they read from the record, so they touch keys not
declared in ``KEYS``. Redis allows that outside cluster mode, and it is the only way
to keep a write at one round trip: the previous user of a session, the user of the
session a regenerate replaces and the user of a session being refreshed or deleted
are known only once the script has read the record. On Redis Cluster the prefix is
empty, the scripts touch only their declared session keys and return the user ids
they found, and the store updates the sets afterwards with ``INDEX``, which touches
only its one declared key.

A record of version 0 is a tombstone (see :class:`~wsgisession.stores.base.Record`):
``REFRESH`` leaves it alone, ``DELETE`` does not call it live, and ``SAVE`` writes
one in place of deleting the key it replaces when given one.

The save lock of ``Store.save_locked`` is three kinds of keys beside a session's,
all named ``<prefix>l:{<prefix><key>}…``: the hash tag puts them in the session's
own slot on Redis Cluster (a prefix with its own hash tag wins, which keeps them
in that slot too). The *lock* itself, ``…}``, holds the holder's random token with a
lease (``PX``), so a holder that dies frees it when the lease runs out. The *line*,
``…}:q``, is a list of the tokens of the callers waiting for it, oldest first.
Each waiter blocks (``BLPOP``) on its own *baton*, ``…}:<token>``. Whoever frees the
lock hands it straight to the oldest waiter, in the same script: the lock takes that
waiter's token and its baton gets an element, which wakes it. The lock is never free
while someone waits, so no newcomer can overtake the line; the order of the line is
the order in which the callers' ``TAKE`` scripts ran. The baton is named from a
token that only the script knows, so the scripts touch it without declaring it;
it is in the lock's slot, which Redis Cluster allows. Every one of these keys
expires: the lock and a baton with the lease, the line a while after its last
waiter last looked at it. The caller's side of this, waiting and the lease's length,
is :mod:`~wsgisession.stores._redis_lock`.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, TypeAlias

from .base import Record

__all__ = [
    "DELETE",
    "HEADER",
    "INDEX",
    "MAX_TTL_MS",
    "LOCKED",
    "REFRESH",
    "RELEASE",
    "SAVE",
    "TAKE",
    "Keys",
    "Peek",
    "Run",
    "Script",
    "decode",
    "encode",
    "peek",
    "tombstone_args",
    "ttl_ms",
    "user_of",
    "version_arg",
]

_MAGIC: Final = b"wsr1"

#: magic, version, created_at, expires_at, last_seen, user id length, meta length.
HEADER: Final = struct.Struct(">4sqdddiI")

# Where expires_at starts; last_seen follows it, so a refresh writes both at once.
_EXPIRES_AT: Final = 20


_VERSION: Final = struct.Struct(">q")

#: The longest TTL, in milliseconds, given to Redis: a hundred years, ten times the
#: longest duration the middleware accepts. Redis refuses a TTL that overflows its
#: clock, and a Lua number becomes a command argument in exponent notation from 1e17
#: on, which Redis refuses as "not an integer".
MAX_TTL_MS: Final = 100 * 365 * 86_400 * 1000


def version_arg(version: int | None) -> bytes:
    """Return *version* as the scripts compare it: its 8 header bytes (empty for none).

    Lua's numbers are doubles, exact only up to 2**53; the bytes are exact for any
    version, so a compare-and-set never mistakes one version for its neighbour.
    """
    return b"" if version is None else _VERSION.pack(version)


def ttl_ms(expires_at: float, now: float) -> int:
    """Return the TTL in milliseconds that makes Redis drop a record at *expires_at*.

    Relative to the application's *now*, so Redis drops the record when the
    application's clock reaches *expires_at* even if the server's clock is off. Zero
    means the record is already expired, and the scripts delete the key. At most
    :data:`MAX_TTL_MS`, however far *expires_at* is.
    """
    left = (expires_at - now) * 1000
    if not left > 0:  # NaN too: a record that is never live
        return 0
    # Compared before rounding, as math.ceil() of an infinity raises.
    return MAX_TTL_MS if left >= MAX_TTL_MS else math.ceil(left)


def tombstone_args(tombstone: Record | None, now: float) -> list[str | bytes | int]:
    """Return a tombstone as the scripts take it: its TTL, then its encoding.

    ``[0, b""]`` for none: the replaced key is deleted instead.
    """
    if tombstone is None:
        return [0, b""]
    return [ttl_ms(tombstone.expires_at, now), encode(tombstone)]


def encode(record: Record) -> bytes:
    """Return *record* in the layout the scripts read."""
    user = b"" if record.user_id is None else record.user_id.encode()
    head = HEADER.pack(
        _MAGIC,
        record.version,
        record.created_at,
        record.expires_at,
        record.last_seen,
        -1 if record.user_id is None else len(user),
        len(record.meta),
    )
    return b"".join((head, user, record.meta, record.data))


def decode(value: bytes) -> Record:
    """Return the record *value* holds, expired or not.

    :raises ValueError: *value* is not a record in this layout. The message says
        what is wrong, never what *value* holds.
    """
    version, created_at, expires_at, last_seen, user_len, meta_len = _unpack(value)
    if user_len < -1:
        raise ValueError("the header gives the user id a negative length")
    start = HEADER.size + max(user_len, 0)
    end = start + meta_len
    if end > len(value):
        raise ValueError("the record is cut short")
    try:
        user_id = None if user_len < 0 else value[HEADER.size : start].decode()
    except UnicodeDecodeError:
        # Its message quotes the bytes it could not decode.
        raise ValueError("the user id is not UTF-8") from None
    return Record(
        data=value[end:],
        version=version,
        created_at=created_at,
        expires_at=expires_at,
        last_seen=last_seen,
        user_id=user_id,
        meta=value[start:end],
    )


class Peek(NamedTuple):
    """The two header fields a compare-and-set looks at."""

    version: int
    expires_at: float


def peek(head: bytes, size: int | None = None) -> Peek | None:
    """Return the version and expiry in the first :data:`HEADER` bytes of a record.

    ``None`` if *head* is not the start of a record in this layout, or, given the
    record's *size* in bytes, if the lengths in the header don't fit in it, as
    :func:`decode` would find.
    """
    try:
        version, _, expires_at, _, user_len, meta_len = _unpack(head)
    except ValueError:
        return None
    if size is not None and (user_len < -1 or HEADER.size + max(user_len, 0) + meta_len > size):
        return None
    return Peek(version, expires_at)


def _unpack(value: bytes) -> tuple[int, float, float, float, int, int]:
    try:
        magic, *fields = HEADER.unpack_from(value)
    except struct.error:
        raise ValueError("too short for a record header") from None
    if magic != _MAGIC:
        raise ValueError("not in this store's record format")
    version, created_at, expires_at, last_seen, user_len, meta_len = fields
    return version, created_at, expires_at, last_seen, user_len, meta_len


class Keys:
    """The names of a store's keys under *prefix*, as the scripts build them too.

    A session is ``<prefix><key>``, and its key is 64 hex digits, so that no
    session's name starts with ``u:`` or ``l:`` after the prefix: those start the
    names of the user sets and of the save locks, their lines and batons.
    """

    __slots__ = ("index", "locks", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: Where the user sets' names start: the scripts' index prefix.
        self.index = prefix + "u:"
        #: Where the save locks' names start.
        self.locks = prefix + "l:"

    def lock(self, key: str) -> str:
        """Name the save lock of the session under *key*.

        The session's name is the lock's hash tag, which puts the lock in the
        session's Redis Cluster slot.
        """
        return f"{self.locks}{{{self.prefix}{key}}}"

    def user(self, user_id: str | bytes) -> str:
        """Name the set of *user_id*'s sessions.

        From the hex of its UTF-8, as ``user_key`` does in the scripts: any user id
        makes a distinct name.
        """
        raw = user_id.encode() if isinstance(user_id, str) else user_id
        return self.index + raw.hex()


class Script(NamedTuple):
    """A script's source and the SHA1 that ``EVALSHA`` names it by."""

    source: str
    sha: str


#: Runs a script on the store's server: the script, its keys, its arguments; raises
#: :exc:`~wsgisession.StoreError` when the server fails.
Run: TypeAlias = Callable[[Script, Sequence[str], Sequence[str | bytes | int]], Any]


def user_of(answer: object) -> bytes | None:
    """Return a user id a script answered, as stored, or ``None`` for nil."""
    return answer if isinstance(answer, bytes) else None


def _script(body: str) -> Script:
    source = (
        f"local MAX_TTL = {MAX_TTL_MS}\n" + _LAYOUT + _INDEX_FUNCTIONS + _WRITE_FUNCTIONS + body
    )
    return Script(source, hashlib.sha1(source.encode()).hexdigest())


# Reading a record: ``stored(key)`` and ``parse(s)`` return its version (the header's
# 8 raw bytes, compared with version_arg()'s, as a Lua number loses digits past
# 2**53; TOMBSTONE is version 0's), expires_at, last_seen and user id (false if
# none), or nothing at all when there is no record in this layout (missing, another
# type, another format).
# ``stored`` reads only the header, and the user id after it only when there is one.
# pcall, because GETRANGE on a key of another type is an error, and such a key must
# read as absent.
_LAYOUT: Final = f"""
local MAGIC, HEADER, EXPIRES_AT = '{_MAGIC.decode()}', {HEADER.size}, {_EXPIRES_AT}
local TOMBSTONE = string.rep(string.char(0), 8)
local function parse(s, key)
  if #s < HEADER then return nil end
  local magic, _, _, expires, seen, ulen = struct.unpack('>c4i8dddi4', s)
  if magic ~= MAGIC then return nil end
  local version = string.sub(s, 5, 12)
  if ulen < 0 then return version, expires, seen, false end
  local uid
  if key then
    uid = redis.call('GETRANGE', key, HEADER, HEADER + ulen - 1)
  else
    uid = string.sub(s, HEADER + 1, HEADER + ulen)
  end
  if #uid ~= ulen then return nil end
  return version, expires, seen, uid
end
local function stored(key)
  local s = redis.pcall('GETRANGE', key, 0, HEADER - 1)
  if type(s) ~= 'string' then return nil end
  return parse(s, key)
end
"""

# Shared by the scripts: a user's set name, and linking, unlinking and tidying it.
# Scores and times go to Redis as the strings they came in as, or with %.17g: a Lua
# number turned into a command argument by Redis keeps fewer digits. A set's TTL is
# capped at MAX_TTL, like a session's, for a member whose expiry is ever so far.
_INDEX_FUNCTIONS: Final = """
local function user_key(idx, uid)
  return idx .. (string.gsub(uid, '.', function(c)
    return string.format('%02x', string.byte(c))
  end))
end
local function tidy(name, now)
  redis.call('ZREMRANGEBYSCORE', name, '-inf', now)
  local last = redis.call('ZRANGE', name, -1, -1, 'WITHSCORES')
  if last[2] then
    local ttl = math.ceil((tonumber(last[2]) - tonumber(now)) * 1000)
    redis.call('PEXPIRE', name, math.min(ttl, MAX_TTL))
  end
end
local function link(idx, uid, member, score, now)
  local name = user_key(idx, uid)
  redis.call('ZADD', name, score, member)
  tidy(name, now)
end
local function unlink(idx, uid, member, now)
  local name = user_key(idx, uid)
  redis.call('ZREM', name, member)
  tidy(name, now)
end
"""

# Shared by the writing scripts. ``vacate`` empties a replaced key: the tombstone
# (when one is given and not already expired) or nothing. ``put`` writes a record,
# vacates the key it replaces, and moves the user index entries with them: *old* is
# the user of the record the write replaces under the same key, *gone* the user of
# the replaced key's record. ``hand_over`` frees the save lock: the oldest waiter in
# line gets it, with a fresh lease, and is woken through its baton.
_WRITE_FUNCTIONS: Final = """
local function vacate(key, stone_ttl, stone)
  if stone ~= '' and tonumber(stone_ttl) > 0 then
    redis.call('SET', key, stone, 'PX', stone_ttl)
  else
    redis.call('DEL', key)
  end
end
local function put(key, record, ttl, replaced, stone_ttl, stone, idx, member, replaced_member,
                   now, old, gone)
  if tonumber(ttl) > 0 then
    redis.call('SET', key, record, 'PX', ttl)
  else
    redis.call('DEL', key)
  end
  if replaced then vacate(replaced, stone_ttl, stone) end
  if idx ~= '' then
    local _, score, _, new = parse(record)
    if old and old ~= new then unlink(idx, old, member, now) end
    if new then link(idx, new, member, string.format('%.17g', score), now) end
    if gone then unlink(idx, gone, replaced_member, now) end
  end
end
local function hand_over(lock, line, lease)
  local waiter = redis.call('LPOP', line)
  if not waiter then
    redis.call('DEL', lock)
    return
  end
  redis.call('SET', lock, waiter, 'PX', lease)
  local baton = lock .. ':' .. waiter
  redis.call('RPUSH', baton, 1)
  redis.call('PEXPIRE', baton, lease)
end
local function value_of(key)
  local value = redis.pcall('GET', key)
  if type(value) ~= 'string' then return false end
  return value
end
"""

#: KEYS: the key, its save lock, then optionally the key it replaces.
#: ARGV: the expected version (from version_arg(); '' to create), now, the TTL in ms
#: (0 or less: the record is already expired, and the key is deleted), the index
#: prefix ('' to leave the index alone), the key and the replaced key without the
#: store's prefix (the members of the user sets), the version the replaced record
#: must have (from version_arg(); '' to delete whatever is there), the tombstone's
#: TTL and the encoded tombstone (from tombstone_args(); '' to delete the replaced
#: key), and last the encoded record: redis-py copies its buffer once per argument
#: after a long one.
#: Returns {1, the user id the stored record had (nil if none)} when written, {0}
#: when the stored version did not match, the replaced record is not live with the
#: version given, or another caller holds the key's save lock. The lock is looked at
#: last, so a save that fails its compare pays nothing for it.
SAVE: Final = _script("""
local now = tonumber(ARGV[2])
local version, expires, _, old = stored(KEYS[1])
if version and expires > now then
  if version ~= ARGV[1] then return {0} end
elseif ARGV[1] ~= '' then
  return {0}
end
local gone = false
if KEYS[3] then
  local was, until_, _, uid = stored(KEYS[3])
  if ARGV[7] ~= '' and not (was == ARGV[7] and until_ > now) then return {0} end
  gone = uid or false
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {0} end
put(KEYS[1], ARGV[10], ARGV[3], KEYS[3], ARGV[8], ARGV[9], ARGV[4], ARGV[5], ARGV[6],
    ARGV[2], old, gone)
return {1, old or false}
""")

#: KEYS: the key. ARGV: now, expires_at, last_seen, the TTL in ms for expires_at,
#: the index prefix ('' to leave the index alone), the key without the store's prefix.
#: Returns {1, 1 if the expiry moved else 0, the user id or nil} when the record was
#: live, {0} otherwise, and for a tombstone, which no refresh keeps alive.
REFRESH: Final = _script("""
local version, expires, seen, uid = stored(KEYS[1])
if not version or expires <= tonumber(ARGV[1]) or version == TOMBSTONE then return {0} end
local want, saw = tonumber(ARGV[2]), tonumber(ARGV[3])
local moved = 0
if want > expires then
  moved, expires = 1, want
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  if uid and ARGV[5] ~= '' then link(ARGV[5], uid, ARGV[6], ARGV[2], ARGV[1]) end
end
if moved == 1 or saw > seen then
  redis.call('SETRANGE', KEYS[1], EXPIRES_AT, struct.pack('>dd', expires, math.max(seen, saw)))
end
return {1, moved, uid}
""")

#: KEYS: the key. ARGV: now, the index prefix ('' to leave the index alone), the key
#: without the store's prefix, and optionally a version (from version_arg()): then
#: only a live record of that version is deleted (the compare-and-delete of a
#: regenerate on Redis Cluster), and anything else is left as it is and answered {0};
#: then optionally a tombstone's TTL and encoding (from tombstone_args()), written in
#: place of the deleted record.
#: Returns {1 if a live record, not a tombstone, was deleted else 0, the user id the
#: record had or nil}.
DELETE: Final = _script("""
local version, expires, _, uid = stored(KEYS[1])
local live = version ~= nil and expires > tonumber(ARGV[1])
if ARGV[4] and ARGV[4] ~= '' and not (live and version == ARGV[4]) then
  return {0}
end
local removed = redis.call('EXISTS', KEYS[1])
vacate(KEYS[1], ARGV[5] or 0, ARGV[6] or '')
if uid and ARGV[2] ~= '' then unlink(ARGV[2], uid, ARGV[3], ARGV[1]) end
if removed == 1 and live and version ~= TOMBSTONE then return {1, uid or false} end
return {0, uid or false}
""")

#: One user's set, on its own (Redis Cluster, and dropping stale members when read).
#: KEYS: the set. ARGV: now, then 'link' (add or raise each member's score: ZADD GT),
#: 'unlink' (remove each member) or 'prune' (remove each member whose score is still
#: the given one, so an entry a concurrent save just renewed stays), then member and
#: score pairs (the score is ignored by 'unlink'). Returns 1.
INDEX: Final = _script("""
local name, now, op = KEYS[1], ARGV[1], ARGV[2]
for i = 3, #ARGV, 2 do
  local member, score = ARGV[i], ARGV[i + 1]
  if op == 'link' then
    redis.call('ZADD', name, 'GT', score, member)
  elseif op == 'unlink' then
    redis.call('ZREM', name, member)
  elseif tonumber(redis.call('ZSCORE', name, member)) == tonumber(score) then
    redis.call('ZREM', name, member)
  end
end
tidy(name, now)
return 1
""")

#: Take a session's save lock, or wait in line for it. KEYS: the session, its lock,
#: its line and the caller's baton. ARGV: the caller's token, the lease in ms, the
#: line's TTL in ms, and '1' when the caller gives up (its time ran out).
#: The lock goes to the caller if it is free and nobody waits, or if it was handed to
#: the caller. A free lock with a line means its holder's lease ran out (the holder
#: died or stalled): it goes to the oldest waiter, as a release would have done. A
#: caller that does not get it joins the line, unless it is in it already, and keeps
#: the line alive; one that gives up leaves the line.
#: Returns {1, the session's value (false if none or not a string)} to the new holder,
#: {0} to a waiter.
TAKE: Final = _script("""
local token, lease = ARGV[1], ARGV[2]
local holder = redis.call('GET', KEYS[2])
if not holder then
  local first = redis.call('LINDEX', KEYS[3], 0)
  if first and first ~= token then
    hand_over(KEYS[2], KEYS[3], lease)
  else
    if first then redis.call('LPOP', KEYS[3]) end
    redis.call('SET', KEYS[2], token, 'PX', lease)
    holder = token
  end
end
if holder == token then
  redis.call('DEL', KEYS[4])
  return {1, value_of(KEYS[1])}
end
if ARGV[4] == '1' then
  redis.call('LREM', KEYS[3], 0, token)
  redis.call('DEL', KEYS[4])
  return {0}
end
if not redis.call('LPOS', KEYS[3], token) then redis.call('RPUSH', KEYS[3], token) end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {0}
""")

#: Give up a save lock: hand it over if the caller holds it, or leave the line.
#: KEYS: the lock, its line and the caller's baton. ARGV: the caller's token, the
#: lease in ms. Returns 1 if the caller held the lock, else 0.
RELEASE: Final = _script("""
redis.call('DEL', KEYS[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  hand_over(KEYS[1], KEYS[2], ARGV[2])
  return 1
end
redis.call('LREM', KEYS[2], 0, ARGV[1])
return 0
""")

#: The write of a save_locked, which hands the lock over in the same step. KEYS: the
#: key, its lock, its line, and the key the record moves to (only on a standalone
#: server or a Sentinel master). ARGV: the holder's token, the lease in ms, the
#: version the record was built on (from version_arg()), now, the record's TTL in ms,
#: the index prefix ('' to leave the index alone), the key and the key the record
#: moves to without the store's prefix ('' when it stays), the tombstone's TTL and
#: encoding (from tombstone_args()), and last the encoded record.
#: With a key to move to, the record is written there, if no live record is, and the
#: key is vacated. With a key to move to but none in KEYS (Redis Cluster, where it is
#: in another slot), the key is only vacated, and the store writes the record next.
#: Returns {-1} if the caller's lease ran out (the lock may be someone else's now:
#: nothing written), {2, the session's value} if the record is no longer the version
#: it was built on (a regenerate replaced it: nothing written, the lock still held),
#: and otherwise frees the lock and returns {0} if there is no live record any more
#: (a delete, or expiry: nothing written), {3} if the key to move to holds a live
#: record (nothing written), {1, the user id of the key's record or nil} once written.
LOCKED: Final = _script("""
local now = tonumber(ARGV[4])
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {-1} end
local version, expires, _, uid = stored(KEYS[1])
if not version or expires <= now then
  hand_over(KEYS[2], KEYS[3], ARGV[2])
  return {0}
end
if version ~= ARGV[3] then return {2, value_of(KEYS[1])} end
if ARGV[8] == '' then
  put(KEYS[1], ARGV[11], ARGV[5], nil, 0, '', ARGV[6], ARGV[7], '', ARGV[4], uid, false)
elseif KEYS[4] then
  local was, until_, _, prior = stored(KEYS[4])
  if was and until_ > now then
    hand_over(KEYS[2], KEYS[3], ARGV[2])
    return {3}
  end
  put(KEYS[4], ARGV[11], ARGV[5], KEYS[1], ARGV[9], ARGV[10], ARGV[6], ARGV[8], ARGV[7],
      ARGV[4], prior, uid)
else
  vacate(KEYS[1], ARGV[9], ARGV[10])
end
hand_over(KEYS[2], KEYS[3], ARGV[2])
return {1, uid or false}
""")

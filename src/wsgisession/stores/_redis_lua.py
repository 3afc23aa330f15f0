"""The Lua scripts of the Redis store, which read and change its session strings.

Every write of :class:`~wsgisession.stores.redis.RedisStore` is one of these
scripts, so that it is one round trip. The string they read, the keys they are
given and how their arguments are made are in
:mod:`~wsgisession.stores._redis_scripts`.

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

A tombstone (version 0): ``REFRESH`` leaves it alone, ``DELETE`` does not call it
live, and ``SAVE`` writes one in place of deleting the key it replaces when given
one.

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
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, TypeAlias

from ._redis_scripts import EXPIRES_AT, HEADER, MAGIC, MAX_TTL_MS, USER_READ

__all__ = [
    "DELETE",
    "INDEX",
    "LOCKED",
    "REFRESH",
    "RELEASE",
    "SAVE",
    "TAKE",
    "Run",
    "Script",
]


class Script(NamedTuple):
    """A script's source and the SHA1 that ``EVALSHA`` names it by."""

    source: str
    sha: str


#: Runs a script on the store's server: the script, its keys, its arguments; raises
#: :exc:`~wsgisession.StoreError` when the server fails.
Run: TypeAlias = Callable[[Script, Sequence[str], Sequence[str | bytes | int]], Any]


def _script(body: str, *parts: str) -> Script:
    """Make a script of *body* after the shared *parts* it calls.

    Each part is given only to the scripts that call it: a script's functions are
    made anew every time it runs.
    """
    source = f"local MAX_TTL = {MAX_TTL_MS}\n" + "".join(parts) + body
    return Script(source, hashlib.sha1(source.encode()).hexdigest())


# Reading a record: ``stored(key)`` and ``parse(s)`` return its version (the header's
# 8 raw bytes, compared with version_arg()'s, as a Lua number loses digits past
# 2**53; TOMBSTONE is version 0's), expires_at, last_seen and user id (false if
# none), or nothing at all when there is no record in this layout (missing, another
# type, another format).
# ``stored`` reads the header and the USER_READ bytes after it with one GETRANGE,
# which holds most user ids whole; a longer one takes a second GETRANGE. pcall,
# because GETRANGE on a key of another type is an error, and such a key must read as
# absent.
_LAYOUT: Final = f"""
local MAGIC, HEADER, EXPIRES_AT = '{MAGIC.decode()}', {HEADER.size}, {EXPIRES_AT}
local USER_READ = {USER_READ}
local TOMBSTONE = '{"".join(chr(92) + "0" for _ in range(8))}'
local function parse(s, key)
  if #s < HEADER then return nil end
  local magic, _, _, expires, seen, ulen = struct.unpack('>c4i8dddi4', s)
  if magic ~= MAGIC then return nil end
  local version = string.sub(s, 5, 12)
  if ulen < 0 then return version, expires, seen, false end
  local uid = string.sub(s, HEADER + 1, HEADER + ulen)
  if key and #uid < ulen and #s == HEADER + USER_READ then
    uid = redis.call('GETRANGE', key, HEADER, HEADER + ulen - 1)
  end
  if #uid ~= ulen then return nil end
  return version, expires, seen, uid
end
local function stored(key)
  local s = redis.pcall('GETRANGE', key, 0, HEADER + USER_READ - 1)
  if type(s) ~= 'string' then return nil end
  return parse(s, key)
end
"""

# Shared by the scripts: a session key's member in its user's set (the key without
# the store's prefix, which the index prefix ``<prefix>u:`` gives the length of), a
# user's set name, and linking, unlinking and tidying it.
# Scores and times go to Redis as the strings they came in as, or with %.17g: a Lua
# number turned into a command argument by Redis keeps fewer digits. A set's TTL is
# capped at MAX_TTL, like a session's, for a member whose expiry is ever so far.
# A set name holding another type (written by something else under our prefix) is
# left alone, through pcall: an error would end the script after the session's own
# write, and the save would report a failure that had in fact been stored.
_INDEX_FUNCTIONS: Final = """
local function member(key, idx)
  return string.sub(key, #idx - 1)
end
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
  if type(redis.pcall('ZADD', name, score, member)) == 'number' then tidy(name, now) end
end
local function unlink(idx, uid, member, now)
  local name = user_key(idx, uid)
  if type(redis.pcall('ZREM', name, member)) == 'number' then tidy(name, now) end
end
"""

# Shared by the writing scripts. ``vacate`` empties a replaced key: the tombstone
# (when one is given and not already expired) or nothing. ``put`` writes a record,
# vacates the key it replaces, if any, and moves the user index entries with them:
# *old* is the user of the record the write replaces under the same key, *gone* the
# user of the replaced key's record. Given a *stage*, the record waits there and
# *record* is only its head(); RENAME is put's first write, so a stage gone missing
# fails the script before it changed anything.
_PUT_FUNCTIONS: Final = """
local function vacate(key, stone_ttl, stone)
  if stone ~= '' and tonumber(stone_ttl) > 0 then
    redis.call('SET', key, stone, 'PX', stone_ttl)
  else
    redis.call('DEL', key)
  end
end
local function put(key, record, ttl, idx, now, old, replaced, stone_ttl, stone, gone, stage)
  if tonumber(ttl) > 0 and stage then
    redis.call('RENAME', stage, key)
    redis.call('PEXPIRE', key, ttl)
  elseif tonumber(ttl) > 0 then
    redis.call('SET', key, record, 'PX', ttl)
  else
    redis.call('DEL', key)
    if stage then redis.call('DEL', stage) end
  end
  if replaced then vacate(replaced, stone_ttl, stone) end
  if idx ~= '' then
    local _, score, _, new = parse(record)
    local name = member(key, idx)
    if old and old ~= new then unlink(idx, old, name, now) end
    if new then link(idx, new, name, string.format('%.17g', score), now) end
    if gone then unlink(idx, gone, member(replaced, idx), now) end
  end
end
"""

# The save lock's line: ``hand_over`` frees the lock, which the oldest waiter in line
# gets, with a fresh lease, woken through its baton; ``value_of`` reads a session
# whole, for the holder to build on.
_LINE_FUNCTIONS: Final = """
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
#: ARGV: the encoded record (first: redis-py sends a long one as it is, and the
#: short ones after it in one buffer), the expected version (from version_arg(); ''
#: to create), now, the TTL in ms (0 or less: the record is already expired, and the
#: key is deleted), the index prefix ('' to leave the index alone); then, needed only
#: with a key to replace: the version the replaced record must have (from
#: version_arg(); '' to delete whatever is there), the tombstone's TTL and the
#: encoded tombstone (from tombstone_args(); '' to delete the replaced key); then
#: optionally the name of the key the record is staged in (see STAGE_AT; never on
#: Redis Cluster, as the script touches it undeclared), when the first argument is
#: only the record's head(). A staged record is renamed onto the key, or deleted when
#: nothing is written.
#: Returns 0 when the stored version did not match, the replaced record is not live
#: with the version given, or another caller holds the key's save lock; once written,
#: the user id the stored record had, or 1 if it had none (see save_answer()). A
#: reply that is one string or integer, not a list, is the cheapest for redis-py to
#: read. The lock is looked at last, so a save that fails its compare pays nothing for
#: it.
SAVE: Final = _script(
    """
local function compare()
  local now = tonumber(ARGV[3])
  local version, expires, _, old = stored(KEYS[1])
  if version and expires > now then
    if version ~= ARGV[2] then return false end
  elseif ARGV[2] ~= '' then
    return false
  end
  local gone = false
  if KEYS[3] then
    local was, until_, _, uid = stored(KEYS[3])
    if ARGV[6] ~= '' and not (was == ARGV[6] and until_ > now) then return false end
    gone = uid or false
  end
  if redis.call('EXISTS', KEYS[2]) == 1 then return false end
  return true, old, gone
end
local written, old, gone = compare()
if not written then
  if ARGV[9] then redis.call('DEL', ARGV[9]) end
  return 0
end
put(KEYS[1], ARGV[1], ARGV[4], ARGV[5], ARGV[3], old, KEYS[3], ARGV[7], ARGV[8], gone, ARGV[9])
return old or 1
""",
    _LAYOUT,
    _INDEX_FUNCTIONS,
    _PUT_FUNCTIONS,
)

#: KEYS: the key. ARGV: now, expires_at, last_seen, the TTL in ms for expires_at,
#: the index prefix ('' to leave the index alone), and optionally a version (from
#: version_arg()), which the record must have.
#: Returns 0 when the record was not live, and for a tombstone, which no refresh
#: keeps alive, or one of another version; otherwise 1, or, when the index was left
#: alone (Redis Cluster), the expiry moved and the record has a user, that user's id,
#: for the caller to link.
REFRESH: Final = _script(
    """
local version, expires, seen, uid = stored(KEYS[1])
if not version or expires <= tonumber(ARGV[1]) or version == TOMBSTONE then return 0 end
if ARGV[6] and ARGV[6] ~= '' and version ~= ARGV[6] then return 0 end
local want, saw = tonumber(ARGV[2]), tonumber(ARGV[3])
local moved = want > expires
if moved then
  expires = want
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  if uid and ARGV[5] ~= '' then link(ARGV[5], uid, member(KEYS[1], ARGV[5]), ARGV[2], ARGV[1]) end
end
if moved or saw > seen then
  redis.call('SETRANGE', KEYS[1], EXPIRES_AT, struct.pack('>dd', expires, math.max(seen, saw)))
end
if moved and uid and ARGV[5] == '' then return uid end
return 1
""",
    _LAYOUT,
    _INDEX_FUNCTIONS,
)

#: KEYS: the key. ARGV: now, the index prefix ('' to leave the index alone), the key
#: without the store's prefix, and optionally a version (from version_arg()): then
#: only a live record of that version is deleted (the compare-and-delete of a
#: regenerate on Redis Cluster), and anything else is left as it is and answered {0};
#: then optionally a tombstone's TTL and encoding (from tombstone_args()), written in
#: place of the deleted record.
#: Returns {1 if a live record, not a tombstone, was deleted else 0, the user id the
#: record had or nil}.
DELETE: Final = _script(
    """
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
""",
    _LAYOUT,
    _INDEX_FUNCTIONS,
    _PUT_FUNCTIONS,
)

#: One user's set, on its own (Redis Cluster, and dropping stale members when read).
#: KEYS: the set. ARGV: now, then 'link' (add or raise each member's score: ZADD GT),
#: 'unlink' (remove each member) or 'prune' (remove each member whose score is still
#: the given one, so an entry a concurrent save just renewed stays), then member and
#: score pairs (the score is ignored by 'unlink'). Returns 1. A set name holding
#: another type is left alone, as the writing scripts leave it.
INDEX: Final = _script(
    """
local name, now, op = KEYS[1], ARGV[1], ARGV[2]
local kind = redis.call('TYPE', name)['ok']
if kind ~= 'zset' and kind ~= 'none' then return 1 end
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
""",
    _INDEX_FUNCTIONS,
)

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
TAKE: Final = _script(
    """
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
""",
    _LINE_FUNCTIONS,
)

#: Give up a save lock: hand it over if the caller holds it, or leave the line.
#: KEYS: the lock, its line and the caller's baton. ARGV: the caller's token, the
#: lease in ms. Returns 1 if the caller held the lock, else 0.
RELEASE: Final = _script(
    """
redis.call('DEL', KEYS[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  hand_over(KEYS[1], KEYS[2], ARGV[2])
  return 1
end
redis.call('LREM', KEYS[2], 0, ARGV[1])
return 0
""",
    _LINE_FUNCTIONS,
)

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
LOCKED: Final = _script(
    """
local now = tonumber(ARGV[4])
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {-1} end
local version, expires, _, uid = stored(KEYS[1])
if not version or expires <= now then
  hand_over(KEYS[2], KEYS[3], ARGV[2])
  return {0}
end
if version ~= ARGV[3] then return {2, value_of(KEYS[1])} end
if ARGV[8] == '' then
  put(KEYS[1], ARGV[11], ARGV[5], ARGV[6], ARGV[4], uid)
elseif KEYS[4] then
  local was, until_, _, prior = stored(KEYS[4])
  if was and until_ > now then
    hand_over(KEYS[2], KEYS[3], ARGV[2])
    return {3}
  end
  put(KEYS[4], ARGV[11], ARGV[5], ARGV[6], ARGV[4], prior, KEYS[1], ARGV[9], ARGV[10], uid)
else
  vacate(KEYS[1], ARGV[9], ARGV[10])
end
hand_over(KEYS[2], KEYS[3], ARGV[2])
return {1, uid or false}
""",
    _LAYOUT,
    _INDEX_FUNCTIONS,
    _PUT_FUNCTIONS,
    _LINE_FUNCTIONS,
)

"""The Lua scripts :class:`~wsgisession.stores.redis.RedisStore` runs, one per write.

Private. Each session is one hash; the scripts read and write its fields
``data``, ``meta``, ``version``, ``created_at``, ``expires_at``, ``last_seen`` and
``user_id`` (absent when the session has no user). Expiry is judged by the
application's clock, so every script takes the caller's ``time.time()`` as ``now``
and treats a hash whose ``expires_at`` is not after it as absent, whatever TTL
Redis still gives it. Redis's own TTL is set relative to that same ``now``, so
Redis drops a record when the application's clock reaches ``expires_at``, even if
the two clocks disagree.

The user index is one sorted set per user under ``<prefix>u:<hex of the user id's
UTF-8>``, whose members are store keys (without the prefix) scored by their
session's ``expires_at``. Every script that changes a set drops its members that
expired by ``now`` and sets the set's TTL to its latest member's expiry.

``SAVE``, ``REFRESH`` and ``DELETE`` take the index prefix (``<prefix>u:``) as an
argument. When it is not empty (a standalone server or a Sentinel master), they
change the user sets themselves, in the same script as the session: they build a
set's name from the user id they read from the hash, so they touch keys not
declared in ``KEYS``. Redis allows that outside cluster mode, and it is the only way
to keep a write at one round trip: the previous user of a session, the user of the
session a regenerate replaces and the user of a session being refreshed or deleted
are known only once the script has read the hash. On Redis Cluster the prefix is
empty, the scripts touch only their declared session keys and return the user ids
they found, and the store updates the sets afterwards with ``INDEX``, which touches
only its one declared key.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DELETE", "INDEX", "REFRESH", "SAVE"]

# Shared by the scripts: a user's set name, and linking, unlinking and tidying it.
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
    redis.call('PEXPIRE', name, math.ceil((tonumber(last[2]) - tonumber(now)) * 1000))
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

#: KEYS: the key, then optionally the key it replaces.
#: ARGV: expected version ('' to create), now, TTL in ms (0 or less deletes), data,
#: meta, version, created_at, expires_at, last_seen, '1' and the user id or '0' and '',
#: the index prefix ('' to leave the index alone), the key and the replaced key
#: without the store's prefix (the members of the user sets), and the version the
#: replaced record must have ('' to delete whatever is there).
#: Returns {1, the user id the stored hash had (nil if none)} when written, {0} when
#: the stored version did not match, or the replaced record is not live with the
#: version given.
SAVE: Final = (
    _INDEX_FUNCTIONS
    + """
local now = ARGV[2]
local cur = redis.call('HMGET', KEYS[1], 'version', 'expires_at', 'user_id')
local expires = tonumber(cur[2])
if cur[1] and expires and expires > tonumber(now) then
  if cur[1] ~= ARGV[1] then return {0} end
elseif ARGV[1] ~= '' then
  return {0}
end
if KEYS[2] and ARGV[15] and ARGV[15] ~= '' then
  local was = redis.call('HMGET', KEYS[2], 'version', 'expires_at')
  local until_ = tonumber(was[2])
  if not (was[1] == ARGV[15] and until_ and until_ > tonumber(now)) then return {0} end
end
local old = cur[3]
local new = false
if ARGV[10] == '1' then new = ARGV[11] end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'data', ARGV[4], 'meta', ARGV[5], 'version', ARGV[6],
  'created_at', ARGV[7], 'expires_at', ARGV[8], 'last_seen', ARGV[9])
if new then redis.call('HSET', KEYS[1], 'user_id', new) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local idx = ARGV[12]
if idx ~= '' then
  if old and old ~= new then unlink(idx, old, ARGV[13], now) end
  if new then link(idx, new, ARGV[13], ARGV[8], now) end
end
if KEYS[2] then
  local gone = redis.call('HGET', KEYS[2], 'user_id')
  redis.call('DEL', KEYS[2])
  if gone and idx ~= '' then unlink(idx, gone, ARGV[14], now) end
end
return {1, old}
"""
)

#: KEYS: the key. ARGV: now, expires_at, last_seen, the TTL in ms for expires_at,
#: the index prefix ('' to leave the index alone), the key without the store's prefix.
#: Returns {1, 1 if the expiry moved else 0, the user id or nil} when the record was
#: live, {0} otherwise.
REFRESH: Final = (
    _INDEX_FUNCTIONS
    + """
local cur = redis.call('HMGET', KEYS[1], 'expires_at', 'last_seen', 'user_id')
local expires = tonumber(cur[1])
if not expires or expires <= tonumber(ARGV[1]) then return {0} end
local moved = 0
if tonumber(ARGV[2]) > expires then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  moved = 1
  if cur[3] and ARGV[5] ~= '' then link(ARGV[5], cur[3], ARGV[6], ARGV[2], ARGV[1]) end
end
local seen = tonumber(cur[2])
if not seen or tonumber(ARGV[3]) > seen then
  redis.call('HSET', KEYS[1], 'last_seen', ARGV[3])
end
return {1, moved, cur[3]}
"""
)

#: KEYS: the key. ARGV: now, the index prefix ('' to leave the index alone), the key
#: without the store's prefix, and optionally a version: then only a live record of
#: that version is deleted (the compare-and-delete of a regenerate on Redis Cluster),
#: and anything else is left as it is and answered {0}. Returns {1 if a live record
#: was deleted else 0, the user id the hash had or nil}.
DELETE: Final = (
    _INDEX_FUNCTIONS
    + """
local cur = redis.call('HMGET', KEYS[1], 'expires_at', 'user_id', 'version')
if ARGV[4] and ARGV[4] ~= '' then
  local until_ = tonumber(cur[1])
  if not (cur[3] == ARGV[4] and until_ and until_ > tonumber(ARGV[1])) then return {0} end
end
local removed = redis.call('DEL', KEYS[1])
if cur[2] and ARGV[2] ~= '' then unlink(ARGV[2], cur[2], ARGV[3], ARGV[1]) end
local expires = tonumber(cur[1])
local live = 0
if removed == 1 and expires and expires > tonumber(ARGV[1]) then live = 1 end
return {live, cur[2]}
"""
)

#: One user's set, on its own (Redis Cluster, and dropping stale members when read).
#: KEYS: the set. ARGV: now, then 'link' (add or raise each member's score: ZADD GT),
#: 'unlink' (remove each member) or 'prune' (remove each member whose score is still
#: the given one, so an entry a concurrent save just renewed stays), then member and
#: score pairs (the score is ignored by 'unlink'). Returns 1.
INDEX: Final = (
    _INDEX_FUNCTIONS
    + """
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
"""
)

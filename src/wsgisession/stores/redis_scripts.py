"""The Lua scripts :class:`~wsgisession.stores.redis.RedisStore` runs, one per write.

Private. Each session is one hash; the scripts read and write its fields
``data``, ``meta``, ``version``, ``created_at``, ``expires_at``, ``last_seen`` and
``user_id`` (absent when the session has no user). Expiry is judged by the
application's clock, so every script takes the caller's ``time.time()`` as ``now``
and treats a hash whose ``expires_at`` is not after it as absent, whatever TTL
Redis still gives it. Redis's own TTL is set relative to that same ``now``, so
Redis drops a record when the application's clock reaches ``expires_at``, even if
the two clocks disagree.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DELETE", "REFRESH", "SAVE"]

#: KEYS: the key, then optionally the key it replaces.
#: ARGV: expected version ('' to create), now, TTL in ms (0 or less deletes), data,
#: meta, version, created_at, expires_at, last_seen, '1' and the user id or '0' and ''.
#: Returns 1 when written, 0 when the stored version did not match.
SAVE: Final = """
local cur = redis.call('HMGET', KEYS[1], 'version', 'expires_at')
local expires = tonumber(cur[2])
if cur[1] and expires and expires > tonumber(ARGV[2]) then
  if cur[1] ~= ARGV[1] then return 0 end
elseif ARGV[1] ~= '' then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'data', ARGV[4], 'meta', ARGV[5], 'version', ARGV[6],
  'created_at', ARGV[7], 'expires_at', ARGV[8], 'last_seen', ARGV[9])
if ARGV[10] == '1' then redis.call('HSET', KEYS[1], 'user_id', ARGV[11]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if KEYS[2] then redis.call('DEL', KEYS[2]) end
return 1
"""

#: KEYS: the key. ARGV: now, expires_at, last_seen, the TTL in ms for expires_at.
#: Returns 1 when the record was live, 0 otherwise.
REFRESH: Final = """
local cur = redis.call('HMGET', KEYS[1], 'expires_at', 'last_seen')
local expires = tonumber(cur[1])
if not expires or expires <= tonumber(ARGV[1]) then return 0 end
if tonumber(ARGV[2]) > expires then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local seen = tonumber(cur[2])
if not seen or tonumber(ARGV[3]) > seen then
  redis.call('HSET', KEYS[1], 'last_seen', ARGV[3])
end
return 1
"""

#: KEYS: the key. ARGV: now. Returns 1 when a live record was deleted.
DELETE: Final = """
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
local removed = redis.call('DEL', KEYS[1])
if removed == 1 and expires and expires > tonumber(ARGV[1]) then return 1 end
return 0
"""

"""The Lua scripts that make every RedisStorage change atomic.

Each script runs inside Redis as one step, so no other node sees a half
done change.  Lease times use the Redis server's clock (``TIME``), so nodes
whose clocks differ still agree on when a lease ends; due times are the
queue's own timestamps.

Keys: ``due`` (sorted set, id -> next attempt time), ``claimed`` (sorted
set, id -> lease end), one hash per envelope, and a pub/sub channel that
wakes idle nodes.
"""

from __future__ import annotations

__all__ = [
    "CLAIM",
    "CLAIM_DUE",
    "DELIVERED",
    "INCREMENT",
    "LOAD",
    "RELEASE",
    "RENEW",
    "RESCHEDULE",
    "SET_ERROR",
    "WRITE",
]

_NOW = "local _t = redis.call('TIME')\nlocal now = tonumber(_t[1]) + tonumber(_t[2]) / 1000000\n"

#: KEYS: hash, claimed, due.  ARGV: meta, headers, body, nrcpt, ts, owner
#: ('' = do not claim), lease seconds, id, wake channel.  0 if the id exists.
WRITE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', '1', 'meta', ARGV[1], 'headers', ARGV[2], 'body', ARGV[3],
           'nrcpt', ARGV[4], 'ts', ARGV[5], 'attempts', '0')
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'owner', ARGV[6])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[7]), ARGV[8])
else
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[8])
  redis.call('PUBLISH', ARGV[9], ARGV[5])
end
return 1
"""
)

#: KEYS: hash, due, claimed.  ARGV: id, owner, lease seconds.
#: false = unknown id, 0 = another node holds a live lease, else the fields.
CLAIM = (
    _NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'meta', 'headers', 'body', 'done', 'attempts', 'owner')
if not f[1] then return false end
local lease = redis.call('ZSCORE', KEYS[3], ARGV[1])
if lease and f[6] and f[6] ~= ARGV[2] and tonumber(lease) > now then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
return {f[1], f[2], f[3], f[4] or '', f[5] or '0'}
"""
)

#: KEYS: due, claimed.  ARGV: client now, owner, lease seconds, batch,
#: hash key prefix.  Claims expired leases first, then due ids; returns
#: {{id, ts, ...}, earliest due, earliest lease end, server now}.
CLAIM_DUE = (
    _NOW
    + """
local lease = now + tonumber(ARGV[3])
local batch = tonumber(ARGV[4])
local out = {}
local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, batch)) do
  local hk = ARGV[5] .. id
  local ts = redis.call('HGET', hk, 'ts')
  if ts then
    redis.call('ZADD', KEYS[2], lease, id)
    redis.call('HSET', hk, 'owner', ARGV[2])
    out[#out + 1] = id
    out[#out + 1] = ts
    n = n + 1
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
if n < batch then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, batch - n)
  for i = 1, #due, 2 do
    local id = due[i]
    local hk = ARGV[5] .. id
    redis.call('ZREM', KEYS[1], id)
    if redis.call('EXISTS', hk) == 1 then
      redis.call('ZADD', KEYS[2], lease, id)
      redis.call('HSET', hk, 'owner', ARGV[2])
      out[#out + 1] = id
      out[#out + 1] = due[i + 1]
    end
  end
end
local nd = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local nc = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {out, nd[2] or '', nc[2] or '', tostring(now)}
"""
)

#: KEYS: hash, due, claimed.  ARGV: id, ts, owner, wake channel.
#: 0 = unknown id, 1 = released to ``due``, 2 = another node holds it.
RESCHEDULE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'ts', ARGV[2])
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[3] then
  local lease = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if lease and tonumber(lease) > now then return 2 end
end
redis.call('HDEL', KEYS[1], 'owner')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
"""
)

#: KEYS: hash.  The new count, or false for an unknown id.
INCREMENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

#: KEYS: hash.  ARGV: error text.
SET_ERROR = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'error', ARGV[1])
return 1
"""

#: KEYS: hash.  ARGV: indexes into the *current* recipient list.  The hash
#: keeps the original list and ``done``, the original indexes delivered.
DELIVERED = """
local n = tonumber(redis.call('HGET', KEYS[1], 'nrcpt'))
if not n then return false end
local done = {}
local cur = redis.call('HGET', KEYS[1], 'done')
if cur then for i in string.gmatch(cur, '%d+') do done[tonumber(i)] = true end end
local left = {}
for i = 0, n - 1 do if not done[i] then left[#left + 1] = i end end
for j = 1, #ARGV do
  local orig = left[tonumber(ARGV[j]) + 1]
  if orig then done[orig] = true end
end
local out = {}
for i = 0, n - 1 do if done[i] then out[#out + 1] = i end end
redis.call('HSET', KEYS[1], 'done', table.concat(out, ','))
return 1
"""

#: KEYS: claimed, then one hash per id.  ARGV: owner, lease seconds, ids.
#: Extends the leases this node still holds; returns the ids it lost.
RENEW = (
    _NOW
    + """
local lease = now + tonumber(ARGV[2])
local lost = {}
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  if redis.call('HGET', KEYS[i], 'owner') == ARGV[1] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], lease, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
"""
)

#: KEYS: due, claimed, then one hash per id.  ARGV: owner, wake channel,
#: ids.  Gives back the claims this node holds (they become due again).
RELEASE = """
local n = 0
for i = 3, #KEYS do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[i], 'owner') == ARGV[1] then
    redis.call('HDEL', KEYS[i], 'owner')
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[1], redis.call('HGET', KEYS[i], 'ts'), id)
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[2], 'release') end
return n
"""

#: KEYS: due, claimed.  ARGV: owner, hash key prefix.  Every unclaimed id
#: with its due time, plus the ids this node holds or whose lease ended.
LOAD = (
    _NOW
    + """
local out = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local claimed = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #claimed, 2 do
  local id = claimed[i]
  local f = redis.call('HMGET', ARGV[2] .. id, 'owner', 'ts')
  if f[2] and (f[1] == ARGV[1] or tonumber(claimed[i + 1]) <= now) then
    out[#out + 1] = id
    out[#out + 1] = f[2]
  end
end
return out
"""
)

-- Move expired leases to the reaped set (their worker stopped heartbeating), and hand
-- back reaped entries that a crashed reaper left behind. The caller decides each job's
-- fate in PostgreSQL, then places it with move.lua, which removes it from reaped.
-- KEYS: lease, reaped
-- ARGV: limit, stale_ms
local limit, stale_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], now, id)
  out[#out + 1] = id
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - stale_ms, 'LIMIT', 0, limit)
for _, id in ipairs(stale) do
  redis.call('ZADD', KEYS[2], now, id)
  out[#out + 1] = id
end
return out

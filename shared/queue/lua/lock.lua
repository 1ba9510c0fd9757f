-- One Redlock node: acquire, extend or release many per-job locks in one round trip.
-- KEYS: the lock keys
-- ARGV: op ('acquire' | 'extend' | 'release'), token, ttl_ms
-- Returns one 0/1 per key (for 'acquire' on a key held by another, its PTTL as a negative
-- number, so the caller knows how long to wait).
local op, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  if op == 'acquire' then
    if redis.call('SET', key, token, 'NX', 'PX', ttl) then
      out[i] = 1
    elseif redis.call('GET', key) == token then
      redis.call('PEXPIRE', key, ttl)
      out[i] = 1
    else
      out[i] = -math.max(redis.call('PTTL', key), 1)
    end
  elseif redis.call('GET', key) == token then
    if op == 'extend' then redis.call('PEXPIRE', key, ttl) else redis.call('DEL', key) end
    out[i] = 1
  elseif op == 'extend' and redis.call('SET', key, token, 'NX', 'PX', ttl) then
    out[i] = 1  -- the node lost the key (restart, flush): nobody else holds it, take it back
  else
    out[i] = 0
  end
end
return out

-- Extend the leases of the jobs a worker still runs (restoring any that Redis lost), and
-- report which of them have a cancel request waiting.
-- KEYS: lease, cancel
-- ARGV: base, lease_ms, then (id, type, limited) per job
local base, lease_ms = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease_ms
local cancelled = {}
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  redis.call('ZADD', KEYS[1], deadline, id)
  if ARGV[i + 2] == '1' then
    redis.call('ZADD', base .. ':running:' .. ARGV[i + 1], deadline, id)
  end
  if redis.call('SISMEMBER', KEYS[2], id) == 1 then
    cancelled[#cancelled + 1] = id
  end
end
return cancelled

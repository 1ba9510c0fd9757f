-- Forget waiting jobs (cancelled, or purged): out of their ready queue and the delayed set.
-- KEYS: delayed, delayed_meta
-- ARGV: base, then (id, type) per job
local base = ARGV[1]
local removed = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  removed = removed + redis.call('ZREM', base .. ':ready:' .. ARGV[i + 1], id)
  removed = removed + redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return removed

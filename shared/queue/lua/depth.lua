-- Queue depth by priority over every job type, plus the delayed and leased counts.
-- KEYS: types, delayed, lease
-- ARGV: base, scale (the ready score is priority * scale + seq)
-- Returns: {ready_p1, ..., ready_p10, delayed, leased}
local base, scale = ARGV[1], tonumber(ARGV[2])
local out = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
for _, jtype in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local ready = base .. ':ready:' .. jtype
  for p = 1, 10 do
    out[p] = out[p] + redis.call('ZCOUNT', ready, p * scale, '(' .. ((p + 1) * scale))
  end
end
out[11] = redis.call('ZCARD', KEYS[2])
out[12] = redis.call('ZCARD', KEYS[3])
return out

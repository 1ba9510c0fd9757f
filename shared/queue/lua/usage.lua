-- What each limited job type uses of its limits now, as the claim script would count it:
-- running attempts whose lease is live, and starts within the rate window. Read only: the
-- claim script prunes expired entries itself.
-- KEYS: lease (only to route the call to the queue's node)
-- ARGV: base, then (type, rate_ms) for every type with a limit
-- Returns: {running1, started_in_window1, running2, ...}
local base = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 2, #ARGV, 2 do
  local jtype, per_ms = ARGV[i], tonumber(ARGV[i + 1])
  out[#out + 1] = redis.call('ZCOUNT', base .. ':running:' .. jtype, '(' .. now, '+inf')
  out[#out + 1] = redis.call('ZCOUNT', base .. ':rate:' .. jtype, '(' .. (now - per_ms), '+inf')
end
return out

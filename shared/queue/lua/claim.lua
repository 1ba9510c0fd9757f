-- Claim up to N ready jobs for one worker: highest priority first, FIFO within a priority,
-- across every job type, honouring each type's concurrency and rate limits. Claimed jobs
-- move to the lease set in the same step, so a job is never in neither place.
-- With a lock token, each claimed job's lock (``base:lock:<id>``) is taken in the same
-- step, so a single-node deployment needs no separate Redlock round trip; a job whose lock
-- another holder still has goes to the delayed set until that lock runs out.
-- KEYS: types, delayed, delayed_meta, lease, signal
-- ARGV: base, n, lease_ms, promote_max, lock token ('' when Redlock is separate), then
--       (type, concurrency, rate_n, rate_ms) for every job type this worker can run (0
--       means unlimited); other types stay queued
-- Returns: {id1, type1, score1, id2, ...}, wake_in_ms (-1: nothing due later), and the
--          types whose ready jobs a limit held back ({type, 'rate'|'concurrency', ...})
local base, n, lease_ms, promote_max, token =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- 1. Promote delayed jobs that are due (retries after backoff, scheduled jobs).
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, promote_max)
for _, id in ipairs(due) do
  local meta = redis.call('HGET', KEYS[3], id)
  if meta then
    local sep = string.find(meta, '|', 1, true)
    local jtype = string.sub(meta, 1, sep - 1)
    redis.call('ZADD', base .. ':ready:' .. jtype, 'NX', string.sub(meta, sep + 1), id)
    redis.call('SADD', KEYS[1], jtype)
    redis.call('HDEL', KEYS[3], id)
  end
  redis.call('ZREM', KEYS[2], id)
end

local limits, known = {}, {}
for i = 6, #ARGV, 4 do
  known[#known + 1] = ARGV[i]
  limits[ARGV[i]] = {tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])}
end

-- 2. How many each type may start now, and the head of each admissible queue.
local wake = -1
local function wake_at(ms)
  if wake < 0 or ms < wake then wake = ms end
end
-- Only types that have ready jobs (the types set) and that this worker runs.
local present = {}
for _, jtype in ipairs(redis.call('SMEMBERS', KEYS[1])) do present[jtype] = true end
local visit = {}
for _, jtype in ipairs(known) do
  if present[jtype] then visit[#visit + 1] = jtype end
end
local candidates = {}
local held = {}
for _, jtype in ipairs(visit) do
  local ready = base .. ':ready:' .. jtype
  local allow = n
  local lim = limits[jtype]
  if lim[1] > 0 or lim[2] > 0 then
    if lim[1] > 0 then
      local running = base .. ':running:' .. jtype
      redis.call('ZREMRANGEBYSCORE', running, '-inf', now)
      allow = math.min(allow, lim[1] - redis.call('ZCARD', running))
      if allow <= 0 then
        held[#held + 1] = jtype
        held[#held + 1] = 'concurrency'
      end
    end
    if lim[2] > 0 and allow > 0 then
      local rate = base .. ':rate:' .. jtype
      redis.call('ZREMRANGEBYSCORE', rate, '-inf', now - lim[3])
      local used = redis.call('ZCARD', rate)
      if used >= lim[2] then
        local oldest = redis.call('ZRANGE', rate, 0, 0, 'WITHSCORES')
        if oldest[2] then wake_at(tonumber(oldest[2]) + lim[3] + 1) end
        held[#held + 1] = jtype
        held[#held + 1] = 'rate'
      end
      allow = math.min(allow, lim[2] - used)
    end
  end
  if allow > 0 then
    local head = redis.call('ZRANGE', ready, 0, allow - 1, 'WITHSCORES')
    for i = 1, #head, 2 do
      candidates[#candidates + 1] = {tonumber(head[i + 1]), head[i], jtype}
    end
  end
end

-- 3. The N best candidates overall; ties (same priority and seq) broken by id.
table.sort(candidates, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
local out = {}
local deadline = now + lease_ms
local taken = 0
for i = 1, #candidates do
  if taken >= n then break end
  local c = candidates[i]
  local id, jtype, score = c[2], c[3], c[1]
  local ready = base .. ':ready:' .. jtype
  local free = true
  if token ~= '' then
    local lock = base .. ':lock:' .. id
    if not redis.call('SET', lock, token, 'NX', 'PX', lease_ms) then
      if redis.call('GET', lock) == token then
        redis.call('PEXPIRE', lock, lease_ms)
      else  -- an earlier holder's lock is still live: wait it out in the delayed set
        free = false
        redis.call('ZREM', ready, id)
        redis.call('ZADD', KEYS[2], now + math.max(redis.call('PTTL', lock), 1) + 1, id)
        redis.call('HSET', KEYS[3], id, jtype .. '|' .. string.format('%.0f', score))
      end
    end
  end
  if free then
    taken = taken + 1
    redis.call('ZREM', ready, id)
    redis.call('ZADD', KEYS[4], deadline, id)
    local lim = limits[jtype]
    if lim[1] > 0 then redis.call('ZADD', base .. ':running:' .. jtype, deadline, id) end
    if lim[2] > 0 then redis.call('ZADD', base .. ':rate:' .. jtype, now, id .. ':' .. now) end
    out[#out + 1] = id
    out[#out + 1] = jtype
    out[#out + 1] = string.format('%.0f', score)
  end
end

-- 4. Forget emptied types; if this worker's slots are full but work is left, pass the
--    wake-up on to another idle worker.
local more = false
for _, jtype in ipairs(visit) do
  if redis.call('ZCARD', base .. ':ready:' .. jtype) == 0 then
    redis.call('SREM', KEYS[1], jtype)
  else
    more = true
  end
end
if more and taken == n then
  redis.call('RPUSH', KEYS[5], '1')
  redis.call('LTRIM', KEYS[5], -64, -1)
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then wake_at(tonumber(first[2])) end
if wake >= 0 then wake = math.max(wake - now, 0) end
return {out, wake, held}

-- Place jobs in the ready queues or the delayed set, and wake one idle worker.
-- KEYS: types, delayed, delayed_meta, signal
-- ARGV: base, then one "id|type|ready_score|due_ms" per job (due_ms 0 means "now"): one
--       argument a job keeps a 1,000-job batch cheap to send.
-- ZADD NX: a job already placed keeps its place, so a repeated push cannot reorder it.
local base = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local placed = 0
local seen = {}
for i = 2, #ARGV do
  local id, jtype, score, due = string.match(ARGV[i], '^([^|]+)|([^|]+)|([^|]+)|([^|]+)$')
  due = tonumber(due)
  if due > now then
    placed = placed + redis.call('ZADD', KEYS[2], 'NX', due, id)
    redis.call('HSET', KEYS[3], id, jtype .. '|' .. score)
  else
    placed = placed + redis.call('ZADD', base .. ':ready:' .. jtype, 'NX', score, id)
    if not seen[jtype] then
      seen[jtype] = true
      redis.call('SADD', KEYS[1], jtype)
    end
  end
end
redis.call('RPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], -64, -1)
return placed

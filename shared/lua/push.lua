-- Place jobs in the ready queues or the delayed set, and wake one idle worker.
-- KEYS: types, delayed, delayed_meta, signal
-- ARGV: base, then (id, type, ready_score, due_ms) per job; due_ms 0 means "now".
-- ZADD NX: a job already placed keeps its place, so a repeated push cannot reorder it.
local base = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local placed = 0
for i = 2, #ARGV, 4 do
  local id, jtype, score, due = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  if due > now then
    placed = placed + redis.call('ZADD', KEYS[2], 'NX', due, id)
    redis.call('HSET', KEYS[3], id, jtype .. '|' .. score)
  else
    placed = placed + redis.call('ZADD', base .. ':ready:' .. jtype, 'NX', score, id)
    redis.call('SADD', KEYS[1], jtype)
  end
end
redis.call('RPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], -64, -1)
return placed

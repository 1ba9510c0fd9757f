-- Place jobs in the ready queues or the delayed set, and wake one idle worker.
-- KEYS: types, delayed, delayed_meta, signal
-- ARGV: base, then the jobs as one argument: "id|type|ready_score|due_ms" per job (due_ms 0
--       means "now"), joined by ":" (which job type names may not hold). One argument for
--       all keeps a 1,000-job batch cheap to send: redis-py packs each argument in Python.
-- ZADD NX: a job already placed keeps its place, so a repeated push cannot reorder it.
local base = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local placed = 0
-- Ready jobs are gathered per type and added with one ZADD per type (in slices that stay
-- within Lua's stack): a call per job cost a 1,000-job push more than the adds themselves.
local ready = {}
local order = {}
for id, jtype, score, due in string.gmatch(ARGV[2], '([^|:]+)|([^|:]+)|([^|:]+)|([^|:]+)') do
  due = tonumber(due)
  if due > now then
    placed = placed + redis.call('ZADD', KEYS[2], 'NX', due, id)
    redis.call('HSET', KEYS[3], id, jtype .. '|' .. score)
  else
    local pairs_ = ready[jtype]
    if not pairs_ then
      pairs_ = {}
      ready[jtype] = pairs_
      order[#order + 1] = jtype
    end
    pairs_[#pairs_ + 1] = score
    pairs_[#pairs_ + 1] = id
  end
end
local SLICE = 2000  -- elements (score, id) per ZADD
for _, jtype in ipairs(order) do
  local pairs_ = ready[jtype]
  local key = base .. ':ready:' .. jtype
  for first = 1, #pairs_, SLICE do
    placed = placed + redis.call('ZADD', key, 'NX',
                                 unpack(pairs_, first, math.min(first + SLICE - 1, #pairs_)))
  end
  redis.call('SADD', KEYS[1], jtype)
end
redis.call('RPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], -64, -1)
return placed

-- Take jobs out of the lease (or reaped) set and put each where its outcome says.
-- KEYS: types, delayed, delayed_meta, lease, reaped, cancel, signal
-- ARGV: base, lock token ('' when Redlock is separate), then (id, type, action,
--   ready_score, due_ms) per job, where action is
--   'drop'    the job is finished (or not ours): forget it
--   'ready'   back to its ready queue (graceful shutdown, recovered lease)
--   'delay'   to the delayed set until due_ms (retry backoff, lock still held elsewhere)
--   'unlock'  only release our lock (a newer attempt owns the job now)
-- With a token, the job's lock is released too when it is still ours.
local base, token = ARGV[1], ARGV[2]
local wake = false
for i = 3, #ARGV, 5 do
  local id, jtype, action, score, due = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4]
  if token ~= '' and redis.call('GET', base .. ':lock:' .. id) == token then
    redis.call('DEL', base .. ':lock:' .. id)
  end
  if action ~= 'unlock' then  -- (Redis runs Lua 5.1: no goto)
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
    local freed = redis.call('ZREM', base .. ':running:' .. jtype, id)
    if action == 'ready' then
      redis.call('ZADD', base .. ':ready:' .. jtype, 'NX', score, id)
      redis.call('SADD', KEYS[1], jtype)
      wake = true
    elseif action == 'delay' then
      redis.call('ZADD', KEYS[2], due, id)
      redis.call('HSET', KEYS[3], id, jtype .. '|' .. score)
      wake = true
    else
      redis.call('SREM', KEYS[6], id)
      -- A concurrency slot opened: idle workers may be waiting only because the type was
      -- full, and nothing else would wake them before their idle poll.
      if freed == 1 and redis.call('EXISTS', base .. ':ready:' .. jtype) == 1 then
        wake = true
      end
    end
  end
end
if wake then
  redis.call('RPUSH', KEYS[7], '1')
  redis.call('LTRIM', KEYS[7], -64, -1)
end
return 1

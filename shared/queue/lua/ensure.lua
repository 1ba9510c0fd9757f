-- Reconcile: make sure every job PostgreSQL holds as active is somewhere in Redis.
-- Waiting jobs missing from every structure are placed again; running jobs missing a
-- lease get a fresh one (their worker's heartbeat keeps it, or it expires and is reaped);
-- a ready job's type is put back in the types set.
-- KEYS: types, delayed, delayed_meta, lease, reaped
-- ARGV: base, lease_ms, then (id, type, status, ready_score, due_ms) per job
-- Returns: {placed_ready, placed_delayed, leases_restored}
local base, lease_ms = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ready_n, delayed_n, lease_n = 0, 0, 0
for i = 3, #ARGV, 5 do
  local id, jtype, status, score, due = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    tonumber(ARGV[i + 4])
  local ready = base .. ':ready:' .. jtype
  local leased = redis.call('ZSCORE', KEYS[4], id) or redis.call('ZSCORE', KEYS[5], id)
  if status == 'PROCESSING' then
    if not leased then
      redis.call('ZADD', KEYS[4], now + lease_ms, id)
      lease_n = lease_n + 1
    end
  elseif not leased and redis.call('ZSCORE', ready, id) then
    -- Ready, but the claim only visits types named in the types set: a set that lost the
    -- type (a script that failed half way, say, while a cluster slot was being moved)
    -- would strand the job.
    redis.call('SADD', KEYS[1], jtype)
  elseif not leased and not redis.call('ZSCORE', KEYS[2], id) then
    if due > now then
      redis.call('ZADD', KEYS[2], due, id)
      redis.call('HSET', KEYS[3], id, jtype .. '|' .. score)
      delayed_n = delayed_n + 1
    else
      redis.call('ZADD', ready, score, id)
      redis.call('SADD', KEYS[1], jtype)
      ready_n = ready_n + 1
    end
  end
end
return {ready_n, delayed_n, lease_n}

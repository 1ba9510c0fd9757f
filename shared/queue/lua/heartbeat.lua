-- Extend the leases of the jobs a worker still runs (restoring any that Redis lost), and
-- report which of them have a cancel request waiting. With a lock token the jobs' locks
-- are extended too (taken back if Redis lost them); a job whose lock another worker now
-- holds is reported lost and its lease left alone.
-- KEYS: lease, cancel
-- ARGV: base, lease_ms, lock token ('' when Redlock is separate), then (id, type, limited)
-- Returns: {cancelled ids, lost ids}
local base, lease_ms, token = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease_ms
local cancelled, lost = {}, {}
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  local ours = true
  if token ~= '' then
    local lock = base .. ':lock:' .. id
    if redis.call('SET', lock, token, 'NX', 'PX', lease_ms) then
      -- Redis had lost it (flush, failover): nobody else held it, it is ours again
    elseif redis.call('GET', lock) == token then
      redis.call('PEXPIRE', lock, lease_ms)
    else
      ours = false
      lost[#lost + 1] = id
    end
  end
  if ours then
    redis.call('ZADD', KEYS[1], deadline, id)
    if ARGV[i + 2] == '1' then
      redis.call('ZADD', base .. ':running:' .. ARGV[i + 1], deadline, id)
    end
    if redis.call('SISMEMBER', KEYS[2], id) == 1 then
      cancelled[#cancelled + 1] = id
    end
  end
end
return {cancelled, lost}

-- Redis's clock in ms, read on the node that owns the queue's slot (the clock every other
-- script of the queue reads).
-- KEYS: lease (only to route the call to the queue's node)
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

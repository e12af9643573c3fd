-- Put a partition's in-flight timers back in its due set (their owner died mid-fire).
-- KEYS: due zset, inflight hash. Returns the number of timers put back.
local inflight = redis.call('HGETALL', KEYS[2])
for i = 1, #inflight, 2 do redis.call('ZADD', KEYS[1], inflight[i + 1], inflight[i]) end
redis.call('DEL', KEYS[2])
return #inflight / 2

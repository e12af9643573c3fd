-- Take the due timers of one partition: move them from the due set to the in-flight hash.
-- KEYS: due zset, inflight hash. ARGV: now_ms, limit.
-- Returns a flat list: member, score, member, score, ...
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
  redis.call('HSET', KEYS[2], due[i], due[i + 1])
end
return due

--! include dispatchable
-- Mark the units whose heartbeats stopped stale and take them out of the geo index.
-- ARGV: cutoff_ms, limit. Returns how many were marked.
local ids = redis.call('ZRANGEBYSCORE', 'kf:units:seen', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, uid in ipairs(ids) do
  local live = 'kf:unit:' .. uid .. ':live'
  redis.call('HSET', live, 'stale', '1')
  redis.call('ZREM', 'kf:units:seen', uid)
  reindex(live, uid)
end
return #ids

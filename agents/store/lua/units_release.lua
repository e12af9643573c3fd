--! include dispatchable
-- Release units an incident holds. ARGV: incident_id, unit ids...
-- Returns how many were released (only units reserved by that incident are touched).
local n = 0
for i = 2, #ARGV do
  local live = 'kf:unit:' .. ARGV[i] .. ':live'
  redis.call('SREM', 'kf:inc:' .. ARGV[1] .. ':units', ARGV[i])
  if redis.call('HGET', live, 'reserved_by') == ARGV[1] then
    redis.call('HDEL', live, 'reserved_by', 'reserved_ring', 'reserved_ms')
    reindex(live, ARGV[i])
    n = n + 1
  end
end
return n

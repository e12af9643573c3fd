--! include dispatchable
-- Store one incident change atomically, reserving its units first: all of them or none, and
-- never a unit another incident holds (no unit is ever dispatched twice).
-- KEYS: [1] document, [2] outbox, [3] the incident's units set, [4] its partition's timers
--       (due zset), [5] the same timers in flight (hash), [6] open escalations (hash),
--       [7] the open incidents set it belongs to.
-- ARGV: [1] incident id, [2] pool ('avail' | 'drill'), [3] now_ms, [4] stale_ms,
--       [5] the new document (JSON), [6] the outbox (JSON; '' = nothing to publish),
--       [7] the rest of the change (JSON): {reserve: [[unit, ring], ...],
--           timers_set: [[member, due_ms], ...], timers_clear: [member, ...],
--           esc_open: [[id, level], ...], esc_closed: [id, ...], release_all: bool, close: bool}
-- Returns {} when stored; else the units that could not be reserved (and nothing is written).
-- Reserving a unit this incident holds already is a no-op (a replay is safe).
local inc, pool, now, stale_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local change = cjson.decode(ARGV[7])
local want = pool == 'drill' and 'drilling' or 'available'
local failed = {}
for _, r in ipairs(change.reserve) do
  local h = redis.call('HMGET', 'kf:unit:' .. r[1] .. ':live', 'status', 'reserved_by', 'stale', 'seen_ms')
  if h[2] ~= inc then
    if h[2] or h[1] ~= want or h[3] == '1' or not h[4] or now - tonumber(h[4]) > stale_ms then
      table.insert(failed, r[1])
    end
  end
end
if #failed > 0 then return failed end
for _, r in ipairs(change.reserve) do
  local live = 'kf:unit:' .. r[1] .. ':live'
  redis.call('HSET', live, 'reserved_by', inc, 'reserved_ring', r[2], 'reserved_ms', ARGV[3])
  redis.call('SADD', KEYS[3], r[1])
  reindex(live, r[1])
end
if change.release_all then
  for _, uid in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local live = 'kf:unit:' .. uid .. ':live'
    redis.call('SREM', KEYS[3], uid)
    if redis.call('HGET', live, 'reserved_by') == inc then
      redis.call('HDEL', live, 'reserved_by', 'reserved_ring', 'reserved_ms')
      reindex(live, uid)
    end
  end
end
redis.call('SET', KEYS[1], ARGV[5])
if ARGV[6] ~= '' then redis.call('SET', KEYS[2], ARGV[6]) end
for _, t in ipairs(change.timers_set) do redis.call('ZADD', KEYS[4], t[2], t[1]) end
for _, m in ipairs(change.timers_clear) do
  redis.call('ZREM', KEYS[4], m)
  redis.call('HDEL', KEYS[5], m)
end
for _, e in ipairs(change.esc_open) do redis.call('HSET', KEYS[6], e[1], e[2]) end
for _, id in ipairs(change.esc_closed) do redis.call('HDEL', KEYS[6], id) end
if change.close then redis.call('SREM', KEYS[7], inc) end
return {}

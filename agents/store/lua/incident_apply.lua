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
--           esc_open: [[id, level], ...], esc_closed: [id, ...], release: [unit, ...],
--           release_all: bool, close: bool}
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
-- Released units (a no-show, a decline) and, when the incident closes, all it holds: only a
-- reservation of this incident is undone; the unit goes back in the geo index if it belongs there.
local release = change.release
if change.release_all then release = redis.call('SMEMBERS', KEYS[3]) end
if #release > 0 then
  for _, uid in ipairs(release) do
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
-- One command per kind of write (not one per timer or escalation): fewer commands, same effect.
local function flat(rows, a, b)
  local out = {}
  for _, row in ipairs(rows) do table.insert(out, row[a]); table.insert(out, row[b]) end
  return out
end
if #change.timers_set > 0 then redis.call('ZADD', KEYS[4], unpack(flat(change.timers_set, 2, 1))) end
if #change.timers_clear > 0 then
  redis.call('ZREM', KEYS[4], unpack(change.timers_clear))
  redis.call('HDEL', KEYS[5], unpack(change.timers_clear))
end
if #change.esc_open > 0 then redis.call('HSET', KEYS[6], unpack(flat(change.esc_open, 1, 2))) end
if #change.esc_closed > 0 then redis.call('HDEL', KEYS[6], unpack(change.esc_closed)) end
if change.close then redis.call('SREM', KEYS[7], inc) end
return {}

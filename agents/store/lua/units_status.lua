--! include dispatchable
-- Apply a batch of unit status events (the firehose path), one call per chunk.
-- ARGV[1]: now_ms. ARGV[2]: JSON array of
--   [event_id, unit_id, seq, status, at, lat|false, lon|false, on_duty|false, incident|false]
--   (seq, lat and lon as strings: compared with what the hash holds, never reformatted).
-- Returns one code per event: ok | dup | stale:<seq> | illegal:<prev>.
-- Duplicates are recognised by the unit's last 8 event ids (kept on its live hash), so the
-- firehose needs no per-event dedupe keys: memory stays bounded by the number of units.

-- Transitions a unit may not report (prev -> next). Everything else is allowed: a unit may
-- always report available, off duty or out of service, and a post may self-dispatch on scene.
local ILLEGAL = {
  off_duty = {dispatched = true, en_route = true, on_scene = true},
  out_of_service = {dispatched = true, en_route = true, on_scene = true, drilling = true},
  on_scene = {dispatched = true, en_route = true},
  en_route = {dispatched = true},
}

local now = ARGV[1]
local events = cjson.decode(ARGV[2])
local out = {}
for i, e in ipairs(events) do
  local eid, uid, seq, nxt = e[1], e[2], tonumber(e[3]), e[4]
  local live = 'kf:unit:' .. uid .. ':live'
  -- One read of everything this update needs (the index move below reads nothing more).
  local h = redis.call('HMGET', live, 'seq', 'status', 'reserved_by', 'recent', 'kind', 'lat', 'lon',
                       'indexed', 'district', 'incident_id')
  local cur, prev, reserved, recent = h[1], h[2], h[3], h[4] or ''
  if string.find('\n' .. recent .. '\n', '\n' .. eid .. '\n', 1, true) then
    out[i] = 'dup'
  elseif cur and seq <= tonumber(cur) then
    out[i] = 'stale:' .. cur
  elseif prev and ILLEGAL[prev] and ILLEGAL[prev][nxt] then
    out[i] = 'illegal:' .. prev
  else
    -- Remember the last 8 event ids: enough to recognise a batch replayed after a crash; an
    -- older duplicate is refused as stale_seq (dead-lettered with the reason, never applied).
    local kept = {eid}
    for id in string.gmatch(recent, '[^\n]+') do
      if #kept < 8 then table.insert(kept, id) end
    end
    local fields = {'seq', e[3], 'status', nxt, 'at', e[5], 'seen_ms', now, 'stale', '0',
                    'recent', table.concat(kept, '\n')}
    local lat, lon, moved = h[6], h[7], false
    if e[6] and (e[6] ~= lat or e[7] ~= lon) then
      lat, lon, moved = e[6], e[7], true
      table.insert(fields, 'lat'); table.insert(fields, lat)
      table.insert(fields, 'lon'); table.insert(fields, lon)
    end
    -- Released when it reports available after having worked (dispatched/en route/on scene):
    -- a plain "available" heartbeat sent before it heard of its dispatch keeps the reservation.
    if reserved and nxt == 'available' and (prev == 'dispatched' or prev == 'en_route' or prev == 'on_scene') then
      redis.call('HDEL', live, 'reserved_by', 'reserved_ring', 'reserved_ms')
      reserved = false
    end
    local kind, indexed = h[5], h[8]
    -- stale '0': this very update makes the unit fresh again.
    local want = geo_set_of(kind, nxt, reserved, lat, lon, '0')
    -- A heartbeat from the same spot changes nothing in the index: no GEOADD (moved is false).
    move_index(uid, indexed, want, h[9] or 'other', kind, moved, lon, lat)
    if want and want ~= indexed then
      table.insert(fields, 'indexed'); table.insert(fields, want)
    elseif indexed and not want then
      redis.call('HDEL', live, 'indexed')
    end
    if e[8] then table.insert(fields, 'on_duty'); table.insert(fields, e[8]) end
    if e[9] then
      table.insert(fields, 'incident_id'); table.insert(fields, e[9])
    elseif h[10] then
      redis.call('HDEL', live, 'incident_id')
    end
    redis.call('HSET', live, unpack(fields))
    redis.call('ZADD', 'kf:units:seen', now, uid)
    out[i] = 'ok'
  end
end
return out

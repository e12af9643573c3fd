-- The one rule of the geo index, and moving a unit between its sets.
-- A unit is dispatchable — a member of exactly one GEO set kf:geo:<pool>:<kind> — when it has a
-- kind and a position, is not stale nor reserved, its latitude is one Redis' geo index holds
-- (|lat| <= 85.05112878, Web Mercator), and its status is 'available' (pool avail, real
-- incidents) or 'drilling' (pool drill, exercises). Same rule as the Python
-- kaifong.agents.core.units.geo_pool (tests/test_store_units.py checks the two agree).

local function geo_set_of(kind, status, reserved, lat, lon, stale)
  if not kind or not lat or not lon or stale == '1' or reserved then return false end
  if math.abs(tonumber(lat)) > 85.05112878 then return false end
  if status == 'available' then return 'kf:geo:avail:' .. kind end
  if status == 'drilling' then return 'kf:geo:drill:' .. kind end
  return false
end

-- Take unit `uid` out of the set it is `indexed` in and put it in `want` (or none), keeping the
-- dispatchable-units counters per district and kind (kf:units:avail, the availability gauge).
-- `moved`: its position changed, so it is re-added even when the set stays the same. The
-- caller records `want` in the live hash's 'indexed' field (or deletes the field).
local function move_index(uid, indexed, want, district, kind, moved, lon, lat)
  if indexed and indexed ~= want then
    redis.call('ZREM', indexed, uid)
    if string.sub(indexed, 1, 13) == 'kf:geo:avail:' then
      redis.call('HINCRBY', 'kf:units:avail', district .. '|' .. string.sub(indexed, 14), -1)
    end
  end
  if want then
    if want ~= indexed or moved then redis.call('GEOADD', want, lon, lat, uid) end
    if want ~= indexed and string.sub(want, 1, 13) == 'kf:geo:avail:' then
      redis.call('HINCRBY', 'kf:units:avail', district .. '|' .. kind, 1)
    end
  end
end

-- Put the unit whose live hash is `live` in the one set it belongs to now (or none).
local function reindex(live, uid)
  local h = redis.call('HMGET', live, 'kind', 'status', 'reserved_by', 'lat', 'lon', 'stale', 'indexed', 'district')
  local want = geo_set_of(h[1], h[2], h[3], h[4], h[5], h[6])
  move_index(uid, h[7], want, h[8] or 'other', h[1], true, h[5], h[4])
  if want then
    redis.call('HSET', live, 'indexed', want)
  elseif h[7] then
    redis.call('HDEL', live, 'indexed')
  end
end

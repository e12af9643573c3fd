-- Every kind's search around a point in one call. ARGV from `first`: pool, lon, lat, then
-- (kind, radius_m, count) triples. A kind that finds nobody is searched again 4x wider (small
-- radii keep GEOSEARCH cheap). Returns a flat {uid, lon, lat, regv, ...} (regv: the version of
-- the unit's registry entry, '' for an entry older than versions).
local function candidates(first)
  local out = {}
  local pool, lon, lat = ARGV[first], ARGV[first + 1], ARGV[first + 2]
  for i = first + 3, #ARGV, 3 do
    local key = 'kf:geo:' .. pool .. ':' .. ARGV[i]
    local rows = redis.call('GEOSEARCH', key, 'FROMLONLAT', lon, lat, 'BYRADIUS', ARGV[i + 1], 'm',
                            'ASC', 'COUNT', ARGV[i + 2], 'WITHCOORD')
    if #rows == 0 then
      rows = redis.call('GEOSEARCH', key, 'FROMLONLAT', lon, lat, 'BYRADIUS', tonumber(ARGV[i + 1]) * 4,
                        'm', 'ASC', 'COUNT', ARGV[i + 2], 'WITHCOORD')
    end
    for _, r in ipairs(rows) do
      table.insert(out, r[1]); table.insert(out, r[2][1]); table.insert(out, r[2][2])
      table.insert(out, redis.call('HGET', 'kf:unit:' .. r[1] .. ':live', 'regv') or '')
    end
  end
  return out
end

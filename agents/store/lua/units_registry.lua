--! include dispatchable
-- Register (or re-register) one unit.
-- KEYS: dedupe key, registry entry, live hash.
-- ARGV: dedupe ttl s, registry JSON, unit_id, kind, home_lat, home_lon, district, grid.
-- Returns 'dup' for an event seen within the dedupe window, else 'ok'.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'dup' end
redis.call('SET', KEYS[2], ARGV[2])
-- regv: the registry entry's version, so that a worker's cache of entries is never stale.
redis.call('HSET', KEYS[3], 'kind', ARGV[4], 'district', ARGV[7], 'grid', ARGV[8],
           'regv', redis.call('INCR', 'kf:units:regver'))
if not redis.call('HGET', KEYS[3], 'lat') then redis.call('HSET', KEYS[3], 'lat', ARGV[5], 'lon', ARGV[6]) end
redis.call('SADD', 'kf:units:all', ARGV[3])
redis.call('SADD', 'kf:units:district:' .. ARGV[7], ARGV[3])
reindex(KEYS[3], ARGV[3])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 'ok'

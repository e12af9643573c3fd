-- Issue a drill: create it only if its id is new and its unit can be drilled now. The check and
-- the claim are one atomic step, so a reservation (also a script) cannot slip in between.
-- KEYS: drill hash, unit's open-drill key, unit live hash, partition's open-drill hash,
--       decision clock (zset), day list (zset), planner state (hash).
-- ARGV: drill_id, doc JSON, issued_ms, decide_ms, timer member, unit_id, issued (RFC 3339 UTC),
--       open-drill ttl s, keep s.
-- Returns 'new' | 'dup' (this drill id exists already) | 'busy:<why>'.

-- Unit statuses that make a unit ineligible; kaifong.agents.core.drills.BUSY is the same list
-- (tests/test_store_drills.py keeps the two equal). No status yet (never reported) is eligible.
local BUSY = {dispatched = true, en_route = true, on_scene = true, drilling = true, off_duty = true, out_of_service = true}

if redis.call('HEXISTS', KEYS[1], 'doc') == 1 then return 'dup' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'busy:drill_open' end
local h = redis.call('HMGET', KEYS[3], 'status', 'reserved_by')
if h[2] then return 'busy:reserved' end
if h[1] and BUSY[h[1]] then return 'busy:' .. h[1] end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[8])
local prev = redis.call('HGET', KEYS[7], ARGV[6])
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'prev_last', prev or '')
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('HSET', KEYS[7], ARGV[6], ARGV[7])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[6], ARGV[9])
return 'new'

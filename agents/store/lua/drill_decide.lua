-- Decide a drill once: store its result, count it, keep it in the unit's results, close it.
-- KEYS: drill hash, day counts, unit results, district rates, grid rates, unit's open-drill key,
--       partition's open-drill hash, planner state.
-- ARGV: result JSON, outcome, unit results entry ('' = not kept), district, grid, keep n, keep s,
--       drill_id, unit_id, issued (as in the planner state), previous last drill ('' = none).
-- Returns 1 when this call decided the drill (and counted it), 0 when it was decided already.
if redis.call('HSETNX', KEYS[1], 'result', ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('EXPIRE', KEYS[2], ARGV[7])
if ARGV[3] ~= '' then
  redis.call('LPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
end
if ARGV[4] ~= '' then redis.call('HINCRBY', KEYS[4], ARGV[4] .. '|' .. ARGV[2], 1) end
if ARGV[5] ~= '' then redis.call('HINCRBY', KEYS[5], ARGV[5] .. '|' .. ARGV[2], 1) end
if redis.call('GET', KEYS[6]) == ARGV[8] then redis.call('DEL', KEYS[6]) end
redis.call('HDEL', KEYS[7], ARGV[8])
-- An aborted drill does not count as the unit's drill: the planner gets its previous one back.
if ARGV[2] == 'aborted' and redis.call('HGET', KEYS[8], ARGV[9]) == ARGV[10] then
  if ARGV[11] == '' then redis.call('HDEL', KEYS[8], ARGV[9]) else redis.call('HSET', KEYS[8], ARGV[9], ARGV[11]) end
end
return 1

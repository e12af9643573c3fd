-- Give the drill scheduler's lease up, only if this worker holds it.
-- KEYS: lease. ARGV: holder id. Returns 1 when released, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0

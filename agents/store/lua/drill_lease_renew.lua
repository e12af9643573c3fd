-- Renew the drill scheduler's lease, only if this worker still holds it.
-- KEYS: lease. ARGV: holder id, validity ms. Returns 1 when renewed, 0 when another holds it (or none).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0

--! include candidates
-- Open an incident in one round trip: the stored document if there is one, else the fresh
-- document stored and the incident added to its open set; with the outbox, the units an
-- interrupted decision had reserved and whether updates were parked for it; and, for a fresh
-- incident, the candidates of its first decision (lib/candidates.lua), so that the decision
-- needs no round trip of its own to find them.
-- KEYS: document, outbox, units held, early updates, open set.
-- ARGV: fresh document, incident id, the report's dedupe key ('' = checked already), then the
--       candidates search from ARGV[4] (none: no search).
-- Returns {document or false, outbox or false, held units, early exists, 1 if created,
--          candidates}, or {'dup'} when the report was processed before.
if ARGV[3] ~= '' and redis.call('EXISTS', ARGV[3]) == 1 then return {'dup'} end
local doc = redis.call('GET', KEYS[1])
local created = 0
local found = {}
if not doc then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[2])
  created = 1
  if ARGV[4] then found = candidates(4) end
end
return {doc or false, redis.call('GET', KEYS[2]) or false, redis.call('SMEMBERS', KEYS[3]),
        redis.call('EXISTS', KEYS[4]), created, found}

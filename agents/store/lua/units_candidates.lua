--! include candidates
-- Dispatchable units near a point. ARGV: see lib/candidates.lua (from ARGV[1]).
return candidates(1)

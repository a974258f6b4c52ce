-- Feed ready jobs of one queue onto its broker lists while they have room (see top_up).
-- ARGV[1..5] as every ledger script (ledger_lib.lua)
local queue = ARGV[6]
-- Returns how many were fed
return top_up(queue, 1000)

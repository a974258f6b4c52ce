-- Extend the leases of the jobs this worker process is running (every third of a lease), so
-- a job whose runner died is found within one lease (reap.lua) instead of kombu's visibility
-- timeout.
-- ARGV[1..5] as every ledger script (ledger_lib.lua)
local lease_ms = tonumber(ARGV[6])
-- ARGV[7..]: job id, lock token, and when its call started (ms) if it is to be marked as
-- calling now (worker/claims.py), else ''
-- Returns the ids whose claim was already gone (reaped, or claimed by another worker after the
-- lease ran out: the job may run elsewhere now)
local lost = {}
for a = 7, #ARGV, 3 do
  local id, token, calling = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  if redis.call('HGET', job_key(id), 'lock') == token then
    redis.call('ZADD', RUNNING, NOW + lease_ms, id)
    if calling ~= '' then redis.call('HSET', job_key(id), 'calling_since_ms', calling) end
  else
    lost[#lost + 1] = id
  end
end
return lost

-- Extend the leases of the jobs this worker process is running (every third of a lease), so
-- a job whose runner died is found within one lease (reap.lua) instead of kombu's visibility
-- timeout.
-- ARGV[1..5] as every ledger script (ledger_lib.lua)
local lease_ms = tonumber(ARGV[6])
-- ARGV[7..]: job id, lock token pairs
-- Returns the ids whose lease was already gone (expired and maybe reaped: the job may run
-- elsewhere now)
local lost = {}
for a = 7, #ARGV, 2 do
  local id, token = ARGV[a], ARGV[a + 1]
  if redis.call('GET', lock_key(id)) == token then
    redis.call('PEXPIRE', lock_key(id), lease_ms)
    redis.call('ZADD', RUNNING, NOW + lease_ms, id)
  else
    lost[#lost + 1] = id
  end
end
return lost

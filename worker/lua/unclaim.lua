-- A worker hands a claimed job back untouched (no permit came at the gate): the job returns to
-- the state it had before the claim, and its message goes back to the queue.
-- ARGV[1..4] as every ledger script (ledger_lib.lua)
local id, token, previous = ARGV[5], ARGV[6], ARGV[7]
-- Returns 1 if handed back, 0 if the lock was no longer ours (nothing changed)
if redis.call('GET', lock_key(id)) ~= token then return 0 end
local key = job_key(id)
local job = redis.call('HMGET', key, 'state', 'batch')
if job[1] == 'running' then
  redis.call('HSET', key, 'state', previous, 'updated_at_ms', NOW)
  recount('running', previous, job[2])
end
redis.call('DEL', lock_key(id))
redis.call('ZREM', RUNNING, id)
return 1

-- A worker hands a claimed job back untouched (no permit came at the gate): the job is queued
-- again with a new message at the back of its queue, in this step; the worker then drops the
-- message it ran (rejects it without requeue). Not kombu's requeue: it puts the message back
-- and acks it in two round trips, and a worker taking it in between may lose it.
-- ARGV[1..5] as every ledger script (ledger_lib.lua)
local id, token = ARGV[6], ARGV[7]
-- Returns 1 if handed back, 0 if the lock was no longer ours (nothing changed)
local key = job_key(id)
local job = redis.call('HMGET', key, 'state', 'batch', 'kind', 'priority', 'lock')
if job[5] ~= token then return 0 end
redis.call('HDEL', key, 'lock')
if job[1] == 'running' then
  redis.call('HSET', key, 'state', 'queued', 'updated_at_ms', NOW)
  recount('running', 'queued', job[2])
  dispatch(id, job[3], job[4])
  redis.call('INCR', P .. 'handed-back')  -- how often, for `python -m bench L` and operators
end
redis.call('ZREM', RUNNING, id)
return 1

-- Jobs on the schedule whose time has come (due retries, the destination's pause over, jobs
-- recorded to be sent later, rechecks): queued again, their messages pushed (or ready for room
-- on the broker) in the same step that takes them off the schedule, so no crash in between can
-- leave a job that is neither scheduled nor queued.
-- ARGV[1..5] as every ledger script (ledger_lib.lua)
local most = tonumber(ARGV[6])
-- Returns the ids queued
local due = redis.call('ZRANGE', SCHEDULE, '-inf', NOW, 'BYSCORE', 'LIMIT', 0, most)
local queued = {}
for _, id in ipairs(due) do
  redis.call('ZREM', SCHEDULE, id)
  local job = read(id, {'state', 'kind', 'priority', 'batch'})
  local queue = job.kind and queue_of(job.kind)
  if job.state == 'retrying' then
    redis.call('HSET', job_key(id), 'state', 'queued', 'updated_at_ms', NOW)
    recount('retrying', 'queued', job.batch)
    dispatch(id, job.kind, job.priority)
    queued[#queued + 1] = id
  elseif job.state == 'queued' and not redis.call('ZSCORE', dispatched_key(queue), id)
      and not redis.call('ZSCORE', ready_key(queue, job.priority), id) then
    dispatch(id, job.kind, job.priority)  -- recorded to be sent later, or waited for a template
    queued[#queued + 1] = id
  end
  -- running: its runner, or reap.lua if it died, decides; held: it waits its turn; ended: done
end
return queued

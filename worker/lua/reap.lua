-- Jobs whose runner stopped renewing its lease, or is known dead (a killed worker): queued
-- again, their message pushed at once, so a dead worker blocks its jobs (and the entity lines
-- they head) for one sweep or one lease, not kombu's visibility timeout. The call the dead worker made may have applied:
-- delivery is at least once. kombu redelivers the dead worker's own message later; the job has
-- ended or runs by then, and that duplicate is dropped at its claim.
-- ARGV[1..5] as every ledger script (ledger_lib.lua)
local most = tonumber(ARGV[6])
-- ARGV[7..]: processes known dead ("host/pid", worker/liveness.py): their claims end now, not
-- when their leases run out.
-- Returns the ids queued again
local dead = {}
for i = 7, #ARGV do dead[ARGV[i]] = true end
local due = redis.call('ZRANGE', RUNNING, '-inf', NOW, 'BYSCORE', 'LIMIT', 0, most)
if #ARGV >= 7 then
  for _, id in ipairs(redis.call('ZRANGE', RUNNING, 0, -1)) do
    local holder = redis.call('HGET', job_key(id), 'lock')
    if holder and dead[string.match(holder, '^(.-/%d+)/') or ''] then due[#due + 1] = id end
  end
end
local reaped = {}
for _, id in ipairs(due) do
  -- Its score is its lease: due, the claim has ended (one id may be due twice: listed once)
  if redis.call('ZREM', RUNNING, id) == 1 then
    local job = read(id, {'state', 'kind', 'priority', 'batch'})
    redis.call('HDEL', job_key(id), 'lock')
    if job.state == 'running' then
      redis.call('HSET', job_key(id), 'state', 'queued', 'updated_at_ms', NOW)
      recount('running', 'queued', job.batch)
      note(id, cjson.encode({at = NOW, event = 'lease-expired',
                             reason = 'its worker stopped renewing the lease (killed?); queued again'}))
      dispatch(id, job.kind, job.priority)
      reaped[#reaped + 1] = id
    end
  end
end
return reaped

-- A worker claims a job before calling its destination: one runner per job at a time, and only
-- the head of its entity's line (a held job's message is a stale duplicate: dropped; the job is
-- queued again when the job before it ends).
-- ARGV[1..5] as every ledger script (ledger_lib.lua)
local id, token, lease_ms = ARGV[6], ARGV[7], tonumber(ARGV[8])
local pause, probe_interval = ARGV[9], ARGV[10]
-- ARGV[9] its destination's pause hash ('' = none), ARGV[10] the pause's probe interval (ms)
-- when it names none: the first call's pause check is made here, in this round trip
-- (pause_lib.lua; its failures counter is the hash's name .. ':failures')
-- Returns {'claimed', previous state, jobs held behind it, highest version delivered for its
-- entity or '', the job that delivered it or '', the job's hash (field, value, ...), its newest
-- two history entries, the pause's verdict {state, until_ms, failures} or {}} |
-- {'terminal', state} | {'held', ''} | {'locked', lease ms left} | {'missing', ''}
local key = job_key(id)
-- The whole record, read once: the claim needs a few fields, and the worker reads it next.
local record = redis.call('HGETALL', key)
local job = {}
for i = 1, #record, 2 do job[record[i]] = record[i + 1] end
local state, entity = job.state, job.entity
if not state then return {'missing', ''} end
if ENDED[state] then return {'terminal', state} end
if state == 'held' then return {'held', ''} end
local left = claim_left(id, job.lock)
if left > 0 then return {'locked', tostring(left)} end
redis.call('ZADD', RUNNING, NOW + lease_ms, id)
job.state, job.updated_at_ms, job.lock = 'running', tostring(NOW), token
redis.call('HSET', key, 'state', job.state, 'updated_at_ms', job.updated_at_ms, 'lock', token)
recount(state, 'running', job.batch)
local queue = queue_of(job.kind)
redis.call('ZREM', dispatched_key(queue), id)
-- A message was taken off the broker: if its list runs low, feed in the next ready job, and
-- one more, so the list keeps up with the workers.
top_up_after_take(queue, job.priority or 'bulk', 2)
local behind, version, by = 0, '', ''
if entity then
  behind = math.max(0, redis.call('LLEN', line_key(entity)) - 1)
  local last = redis.call('HMGET', line_key(entity) .. ':last', 'v', 'vj')
  version, by = last[1] or '', last[2] or ''
end
-- What the worker reads next, in this round trip: the record as the claim left it, and the
-- history entries that say whether an answer was recorded but never settled (a worker died
-- between the two). Only a job with an attempt on record can have one: a first attempt, nearly
-- every job, reads none.
local now_held = {}
for name, value in pairs(job) do
  now_held[#now_held + 1] = name
  now_held[#now_held + 1] = value
end
local recent = {}
if (tonumber(job.attempts) or 0) > 0 then recent = redis.call('LRANGE', history_key(id), 0, 1) end
local verdict = {}
if pause and pause ~= '' then
  verdict = pause_verdict(pause, pause .. ':failures', NOW, probe_interval)
end
return {'claimed', state, behind, version, by, now_held, recent, verdict}

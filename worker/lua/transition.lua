-- Move a job to a new state: the one way a claimed or resolved job changes state, so the job
-- hash, the counts (the ledger's and its batch's), the review/rejected/schedule sets, the
-- history and its entity's line always agree.
--
-- A job that ends (delivered, merged, superseded, rejected) or goes to review leaves its
-- entity's line, and the next job of that entity is released in the same step: no polling
-- between one job's answer and the next one's message. A job that comes back from review or
-- rejected (an operator's requeue) joins the end of its line again: queued if it is the head,
-- held behind the others otherwise.
--
-- ARGV[1..5] as every ledger script (ledger_lib.lua)
local id, token, allowed, new = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
-- the worker's lock token ('' when an operator acts on an unlocked job); the states the job
-- must be in now, comma-separated ('' = any); the new state
local due, entry = ARGV[10], ARGV[11]
-- schedule due (ms) or ''; the history entry (JSON)
local attempt, fault = ARGV[12], ARGV[13] == '1'
-- the call whose answer this settles, as its history entry (JSON), or '' (no call: an operator's
-- action, a paused destination); '1' if that answer was a fault (it counts against the budget).
-- Recorded here, with the state it leads to, in one step: no crash can leave an answer recorded
-- but not acted on, or acted on but not recorded.
local FIELDS = 14  -- ARGV[14..]: field, value pairs to set on the job hash
-- Returns {'ok', previous state, state now} | {'lost', current} (our lock is gone) |
-- {'conflict', current} | {'missing', ''}
local key = job_key(id)
local job = read(id, {'state', 'batch', 'entity', 'kind', 'priority', 'seq', 'top_seq',
                      'top_id', 'vkey', 'vjob', 'attempts', 'faults', 'retries', 'client',
                      'submitted_at_ms', 'lock'})
local current = job.state
if not current then return {'missing', ''} end
-- Our claim holds while the lock field is our token: a lease that ran out without another
-- worker claiming the job, or reap.lua queueing it again (either clears or replaces the field),
-- leaves the answer ours to record.
if token ~= '' and job.lock ~= token then return {'lost', current} end
if allowed ~= '' and not string.find(',' .. allowed .. ',', ',' .. current .. ',', 1, true) then
  return {'conflict', current}
end

local fields = {'state', new, 'updated_at_ms', NOW}
if attempt ~= '' then
  job.attempts = tostring((tonumber(job.attempts) or 0) + 1)
  fields[#fields + 1], fields[#fields + 2] = 'attempts', job.attempts
  if fault then
    job.faults = tostring((tonumber(job.faults) or 0) + 1)
    fields[#fields + 1], fields[#fields + 2] = 'faults', job.faults
  end
end
-- A delivered job is cut down to its outline below: the fields given here, and the lock, would
-- go with it.
if new ~= 'delivered' then
  for i = FIELDS, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', key, unpack(fields))
  local gone = {}
  if token ~= '' or current == 'running' then gone[#gone + 1] = 'lock' end  -- (as RUNNING below)
  if attempt ~= '' then gone[#gone + 1] = 'calling_since_ms' end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
end
recount(current, new, job.batch)
-- Only a job in review or rejected is listed there (this script is the one that lists it).
if current == 'review' then redis.call('ZREM', P .. 'review', id) end
if current == 'rejected' then redis.call('ZREM', P .. 'rejected', id) end
-- (A running job that ends may still be on the schedule, to be looked at again by a worker
-- that found it locked: due.lua drops an ended job, so that entry is left to it.)
if not (current == 'running' and ENDED[new]) then redis.call('ZREM', SCHEDULE, id) end
if current == 'queued' then  -- no longer waits for its message (an operator's discard, say)
  local queue = queue_of(job.kind)
  redis.call('ZREM', dispatched_key(queue), id)
  redis.call('ZREM', ready_key(queue, job.priority or 'bulk'), id)
end
if new == 'review' then redis.call('ZADD', P .. 'review', NOW, id) end
if new == 'rejected' then redis.call('ZADD', P .. 'rejected', NOW, id) end
if due ~= '' then redis.call('ZADD', SCHEDULE, due, id) end
-- A bulk job's history goes when it says no more than the outline will (one attempt, then
-- delivered). A job with retries, reviews or requeues keeps its story, and so does a realtime
-- one: a service's job is the one someone asks about (how long it waited for a permit, how
-- long the call took), and there are few of them beside a backfill's.
local function zero(v) return not v or v == '' or v == '0' end
-- (Its history holds nothing else: the answer is recorded here, or was just before.)
local plain = new == 'delivered' and job.priority == 'bulk' and job.attempts == '1'
  and zero(job.faults) and zero(job.retries)
  and redis.call('LLEN', history_key(id)) <= (attempt == '' and 1 or 0)
if plain then
  if attempt == '' then redis.call('DEL', history_key(id)) end
else
  if attempt ~= '' then note(id, attempt) end
  note(id, entry)
end
-- (RUNNING counts the running jobs: one an operator moves leaves it too.)
if token ~= '' or current == 'running' then redis.call('ZREM', RUNNING, id) end

if ENDED[new] then
  leave_line(id, job.entity)
elseif new == 'queued' and ENDED[current] then
  if join_line(id, job.entity) then
    if due == '' then dispatch(id, job.kind, job.priority) end
  else
    redis.call('HSET', key, 'state', 'held')
    recount('queued', 'held', job.batch)
    redis.call('ZREM', SCHEDULE, id)
    new = 'held'
  end
end

if new == 'delivered' then
  remember_delivery(id, job)
  outline(id, new, {}, job)
  if not plain then redis.call('EXPIRE', history_key(id), RETENTION_S) end
elseif new == 'merged' or new == 'superseded' then
  outline(id, new, {'entity', 'version', 'last_code', 'last_reason', 'merged_into',
                    'superseded_by'})
  redis.call('EXPIRE', history_key(id), RETENTION_S)
elseif new == 'rejected' then
  -- Rejected records expire after the retention; a job in review waits for a person however
  -- long that takes.
  redis.call('EXPIRE', key, RETENTION_S)
  redis.call('EXPIRE', history_key(id), RETENTION_S)
else
  redis.call('PERSIST', key)
  redis.call('PERSIST', history_key(id))
end
return {'ok', current, new}

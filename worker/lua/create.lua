-- Record new jobs and queue them, each job in one step: no crash can leave a job recorded but
-- not queued, or queued but not recorded. One call takes a group of jobs that share a
-- destination, a priority, a batch and a client (a backfill's chunk), so a thousand jobs cost a
-- few calls, not a thousand.
--
-- Each job joins the line of its entity (the destination record it writes). The head of a line
-- is queued: its Celery message is pushed now. A job behind others is 'held': no message, no
-- worker thread, until the job before it ends (ledger_lib's release_head). A realtime job that
-- joins a line whose head is a bulk job not yet started gives that head its own priority (a
-- realtime message for it), so a backfill's queue does not delay a service's update.
--
-- ARGV[1..5] as every ledger script (ledger_lib.lua)
local client, batch, queue, priority = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
-- The destination queue's Redis list (kombu's) and the Celery message with @@job@@ where the
-- id goes; '' for both: the jobs go on the schedule, due at `due`, for a republisher instead.
local list, template, due = ARGV[10], ARGV[11], ARGV[12]
-- Then PER_JOB arguments per job: id, '1' if the id was derived from an idempotency key (an
-- existing job with it is that key's first job), kind, payload (JSON), retry until (ms),
-- idempotency key or '', entity key or '', version as given or '', version's sort key or ''.
local FIRST, PER_JOB = 13, 9
-- Returns one number per job: 1 created, 0 its idempotency key named an existing job.
-- The hash holds no field a reader can derive (destination, task and queue from the kind; zero
-- counters): less to write for each of a backfill's million jobs.

if template ~= '' then
  -- Stored for dispatch() here and in every other script, written only when it changed.
  local stored = P .. 'message:' .. queue .. ':' .. priority
  if redis.call('HGET', stored, 'text') ~= template then
    redis.call('HSET', stored, 'list', list, 'text', template)
  end
end

local function queue_it(id, kind, as)
  if template ~= '' then
    dispatch(id, kind, as)
  else
    redis.call('ZADD', SCHEDULE, due, id)
  end
end

-- A realtime job behind a bulk head that has not started: the head goes realtime too.
local function promote(entity)
  if priority ~= 'realtime' then return end
  local head = redis.call('LINDEX', line_key(entity), 0)
  local key = job_key(head)
  local state = redis.call('HMGET', key, 'state', 'priority', 'kind')
  if state[1] == 'queued' and state[2] == 'bulk' then
    redis.call('HSET', key, 'priority', 'realtime')
    redis.call('ZREM', ready_key(queue, 'bulk'), head)
    -- If its bulk message is on the broker already, it finds the job ended when fetched, and
    -- is dropped.
    queue_it(head, state[3], 'realtime')
  end
end

local created, queued, held = {}, 0, 0
-- Submission numbers for the whole call at once (an idempotent repeat leaves a gap: harmless).
local seq = redis.call('INCRBY', P .. 'seq', math.floor((#ARGV - FIRST + 1) / PER_JOB))
seq = seq - math.floor((#ARGV - FIRST + 1) / PER_JOB)
for a = FIRST, #ARGV, PER_JOB do
  local id, derived, kind, payload = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local retry_until, idempotency_key = ARGV[a + 4], ARGV[a + 5]
  local entity, version, vkey = ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]
  local key = job_key(id)
  if derived == '1' and redis.call('EXISTS', key) == 1 then
    created[#created + 1] = 0
  else
    local head = join_line(id, entity)
    local fields = {'id', id, 'state', head and 'queued' or 'held', 'kind', kind,
                    'priority', priority, 'payload', payload, 'submitted_at_ms', NOW,
                    'updated_at_ms', NOW, 'retry_until_ms', retry_until,
                    'seq', seq + (a - FIRST) / PER_JOB + 1}
    local optional = {idempotency_key = idempotency_key, client = client, batch = batch,
                      entity = entity, version = version, vkey = vkey}
    for _, name in ipairs({'idempotency_key', 'client', 'batch', 'entity', 'version', 'vkey'}) do
      if optional[name] ~= '' then
        fields[#fields + 1] = name
        fields[#fields + 1] = optional[name]
      end
    end
    redis.call('HSET', key, unpack(fields))
    if head then
      queue_it(id, kind, priority)
      queued = queued + 1
    else
      promote(entity)
      held = held + 1
    end
    created[#created + 1] = 1
  end
end
if queued > 0 then redis.call('HINCRBY', COUNTS, 'queued', queued) end
if held > 0 then redis.call('HINCRBY', COUNTS, 'held', held) end
if batch ~= '' and queued + held > 0 then
  redis.call('HINCRBY', P .. 'batch:' .. batch, 'jobs', queued + held)
end
return created

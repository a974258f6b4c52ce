-- Record new jobs and queue their messages, each job in one step: no crash can leave a job
-- recorded but not queued, or queued but not recorded. One call takes a group of jobs that
-- share a target list, a message template, a batch and a client (a backfill's chunk), so a
-- thousand jobs cost a few calls, not a thousand.
-- KEYS[1] state counts hash, KEYS[2] the destination queue's Redis list (kombu's) when ARGV[5]
-- is a template, else the schedule zset, KEYS[3] the batch's counts hash (ignored when
-- ARGV[2] == ''), KEYS[4..] the job hashes, one per job
-- ARGV[1] schedule due (ms) when ARGV[5] == '', ARGV[2] batch name or '', ARGV[3] now (ms),
-- ARGV[4] client or '', ARGV[5] the Celery message with @@job@@ where the job id goes, or ''
-- to put the jobs on the schedule for the republisher instead;
-- then 7 per job: id, '1' if the id was derived from an idempotency key (an existing job with
-- it is that key's first job), kind, priority, payload (JSON), retry until (ms), idempotency
-- key or ''
-- Returns one number per job: 1 created, 0 its idempotency key named an existing job.
-- The hash holds no field a reader can derive (destination, task and queue from the kind; zero
-- counters): less to write for each of a backfill's million jobs.
local created = {}
local new = 0
for j = 4, #KEYS do
  local a = 5 + (j - 4) * 7
  local id = ARGV[a + 1]
  if ARGV[a + 2] == '1' and redis.call('EXISTS', KEYS[j]) == 1 then
    created[#created + 1] = 0
  else
    local fields = {'id', id, 'state', 'queued', 'kind', ARGV[a + 3], 'priority', ARGV[a + 4],
                    'payload', ARGV[a + 5], 'submitted_at_ms', ARGV[3], 'updated_at_ms', ARGV[3],
                    'retry_until_ms', ARGV[a + 6]}
    if ARGV[a + 7] ~= '' then
      fields[#fields + 1] = 'idempotency_key'
      fields[#fields + 1] = ARGV[a + 7]
    end
    if ARGV[4] ~= '' then
      fields[#fields + 1] = 'client'
      fields[#fields + 1] = ARGV[4]
    end
    if ARGV[2] ~= '' then
      fields[#fields + 1] = 'batch'
      fields[#fields + 1] = ARGV[2]
    end
    redis.call('HSET', KEYS[j], unpack(fields))
    if ARGV[5] ~= '' then
      -- A job id is hex digits: nothing in it is special to gsub.
      redis.call('LPUSH', KEYS[2], (string.gsub(ARGV[5], '@@job@@', id)))
    else
      redis.call('ZADD', KEYS[2], ARGV[1], id)
    end
    new = new + 1
    created[#created + 1] = 1
  end
end
if new > 0 then
  redis.call('HINCRBY', KEYS[1], 'queued', new)
  if ARGV[2] ~= '' then redis.call('HINCRBY', KEYS[3], 'jobs', new) end
end
return created

-- Record a new job and queue its message, in one step: no crash can leave a job recorded but
-- not queued, or queued but not recorded.
-- KEYS[1] job hash, KEYS[2] state counts hash, KEYS[3] the destination queue's Redis list
-- (kombu's) when ARGV[3] is a message, else the schedule zset, KEYS[4] the batch's counts hash
-- (ignored when ARGV[5] == '')
-- ARGV[1] job id, ARGV[2] '1' if the id was derived from an idempotency key (an existing job
-- with it is that key's first job), ARGV[3] the Celery message, or '' to put the job on the
-- schedule for the republisher, due at ARGV[4] (ms), ARGV[5] batch name or '',
-- ARGV[6] kind, ARGV[7] priority, ARGV[8] payload (JSON), ARGV[9] now (ms),
-- ARGV[10] retry until (ms), ARGV[11] idempotency key or '', ARGV[12] client or ''
-- Returns {'created', id} or {'exists', id}.
-- The hash holds no field a reader can derive (destination, task and queue from the kind; zero
-- counters): less to write for each of a backfill's million jobs.
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', ARGV[1]} end
local fields = {'id', ARGV[1], 'state', 'queued', 'kind', ARGV[6], 'priority', ARGV[7],
                'payload', ARGV[8], 'submitted_at_ms', ARGV[9], 'updated_at_ms', ARGV[9],
                'retry_until_ms', ARGV[10]}
if ARGV[11] ~= '' then
  fields[#fields + 1] = 'idempotency_key'
  fields[#fields + 1] = ARGV[11]
end
if ARGV[12] ~= '' then
  fields[#fields + 1] = 'client'
  fields[#fields + 1] = ARGV[12]
end
if ARGV[5] ~= '' then
  fields[#fields + 1] = 'batch'
  fields[#fields + 1] = ARGV[5]
  redis.call('HINCRBY', KEYS[4], 'jobs', 1)
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HINCRBY', KEYS[2], 'queued', 1)
if ARGV[3] ~= '' then
  redis.call('LPUSH', KEYS[3], ARGV[3])
else
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
end
return {'created', ARGV[1]}

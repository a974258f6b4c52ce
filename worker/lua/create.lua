-- Create a job record unless its idempotency key already names one.
-- KEYS[1] job hash, KEYS[2] idempotency key ('' slot allowed: ARGV[3] == '' means none),
-- KEYS[3] state counts hash, KEYS[4] history list, KEYS[5] outbox zset
-- ARGV[1] job id, ARGV[2] outbox due (ms), ARGV[3] idempotency ttl (s) or '',
-- ARGV[4] history entry (JSON), ARGV[5..] field, value pairs of the job hash
-- Returns {'created', id} or {'exists', existing id}.
if ARGV[3] ~= '' then
  local existing = redis.call('GET', KEYS[2])
  if existing then return {'exists', existing} end
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HINCRBY', KEYS[3], 'queued', 1)
redis.call('LPUSH', KEYS[4], ARGV[4])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
return {'created', ARGV[1]}

-- Move a job to a new state: the one way every state change happens, so the job hash, the
-- counts, the review/rejected/schedule sets and the history always agree.
-- KEYS[1] job hash, KEYS[2] lock, KEYS[3] state counts, KEYS[4] history list,
-- KEYS[5] review zset, KEYS[6] rejected zset, KEYS[7] schedule zset
-- ARGV[1] lock token ('' when an operator acts on an unlocked job)
-- ARGV[2] allowed current states, comma-separated ('' = any)
-- ARGV[3] new state, ARGV[4] now (ms), ARGV[5] schedule due (ms) or ''
-- ARGV[6] ttl (s) once terminal, ARGV[7] history entry (JSON), ARGV[8] history length kept
-- ARGV[9..] field, value pairs to set on the job hash
-- Returns {'ok', previous state} | {'lost', ''} (lock gone) | {'conflict', current} | {'missing', ''}
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {'missing', ''} end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'lost', current} end
if ARGV[2] ~= '' and not string.find(',' .. ARGV[2] .. ',', ',' .. current .. ',', 1, true) then
  return {'conflict', current}
end
local id = redis.call('HGET', KEYS[1], 'id')
local new = ARGV[3]
local fields = {'state', new, 'updated_at_ms', ARGV[4]}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HINCRBY', KEYS[3], current, -1)
redis.call('HINCRBY', KEYS[3], new, 1)
redis.call('ZREM', KEYS[5], id)
redis.call('ZREM', KEYS[6], id)
redis.call('ZREM', KEYS[7], id)
if new == 'review' then redis.call('ZADD', KEYS[5], ARGV[4], id) end
if new == 'rejected' then redis.call('ZADD', KEYS[6], ARGV[4], id) end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[7], ARGV[5], id) end
redis.call('LPUSH', KEYS[4], ARGV[7])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[8]) - 1)
-- Delivered and rejected records expire after the retention; a job in review waits for a person
-- however long that takes.
if new == 'delivered' or new == 'rejected' then
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[4])
end
if ARGV[1] ~= '' then redis.call('DEL', KEYS[2]) end
return {'ok', current}

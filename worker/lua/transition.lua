-- Move a job to a new state: the one way every state change happens, so the job hash, the
-- counts (the ledger's and its batch's), the review/rejected/schedule sets and the history
-- always agree. A batch counts its jobs in the states a job ends in (delivered, review, rejected).
-- KEYS[1] job hash, KEYS[2] lock, KEYS[3] state counts, KEYS[4] history list,
-- KEYS[5] review zset, KEYS[6] rejected zset, KEYS[7] schedule zset
-- ARGV[1] lock token ('' when an operator acts on an unlocked job)
-- ARGV[2] allowed current states, comma-separated ('' = any)
-- ARGV[3] new state, ARGV[4] now (ms), ARGV[5] schedule due (ms) or ''
-- ARGV[6] ttl (s) once terminal, ARGV[7] history entry (JSON), ARGV[8] history length kept
-- ARGV[9] prefix of batch keys (the job's ``batch`` field names its counts hash: a standalone
-- Redis or Sentinel allows a key named by data; a Redis Cluster would not)
-- ARGV[10..] field, value pairs to set on the job hash
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
for i = 10, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HINCRBY', KEYS[3], current, -1)
redis.call('HINCRBY', KEYS[3], new, 1)
local batch = redis.call('HGET', KEYS[1], 'batch')
if batch then
  local ended = {delivered = true, review = true, rejected = true}
  if ended[current] then redis.call('HINCRBY', ARGV[9] .. batch, current, -1) end
  if ended[new] then redis.call('HINCRBY', ARGV[9] .. batch, new, 1) end
end
redis.call('ZREM', KEYS[5], id)
redis.call('ZREM', KEYS[6], id)
redis.call('ZREM', KEYS[7], id)
if new == 'review' then redis.call('ZADD', KEYS[5], ARGV[4], id) end
if new == 'rejected' then redis.call('ZADD', KEYS[6], ARGV[4], id) end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[7], ARGV[5], id) end
redis.call('LPUSH', KEYS[4], ARGV[7])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[8]) - 1)
if ARGV[1] ~= '' then redis.call('DEL', KEYS[2]) end
if new == 'delivered' then
  -- A delivered job keeps only what an operator asks of it later, so that a million-row
  -- backfill leaves about 240 bytes a job behind, not its payload (personal data) and envelope.
  -- Not even the success code: "delivered" says it (and keeps the hash in a smaller size class).
  -- A bulk job's history goes too when it says no more than these fields (one attempt, then
  -- delivered). A job with retries, reviews or requeues keeps its story, and so does a realtime
  -- one: a service's job is the one someone asks about (how long it waited for a permit, how
  -- long the call took), and there are few of them beside a backfill's.
  local kept = {'kind', 'client', 'attempts', 'faults', 'retries', 'submitted_at_ms'}
  local values = redis.call('HMGET', KEYS[1], unpack(kept))
  local priority = redis.call('HGET', KEYS[1], 'priority')
  local compact = {'state', new, 'updated_at_ms', ARGV[4]}
  for i, name in ipairs(kept) do
    local value = values[i]
    if value and value ~= '' and value ~= '0' then
      compact[#compact + 1] = name
      compact[#compact + 1] = value
    end
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(compact))
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  local function zero(v) return not v or v == '' or v == '0' end
  if priority == 'bulk' and values[3] == '1' and zero(values[4]) and zero(values[5])
      and redis.call('LLEN', KEYS[4]) <= 2 then
    redis.call('DEL', KEYS[4])
  else
    redis.call('EXPIRE', KEYS[4], ARGV[6])
  end
elseif new == 'rejected' then
  -- Rejected records expire after the retention; a job in review waits for a person however
  -- long that takes.
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[4])
end
return {'ok', current}

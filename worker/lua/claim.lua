-- A worker claims a job before calling its destination: one runner per job at a time.
-- KEYS[1] job hash, KEYS[2] lock, KEYS[3] state counts hash
-- ARGV[1] lock token, ARGV[2] lock lease (ms), ARGV[3] now (ms)
-- Returns {'claimed', previous state} | {'terminal', state} | {'locked', ttl ms} | {'missing', ''}
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
if state == 'delivered' or state == 'review' or state == 'rejected' then
  return {'terminal', state}
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'locked', tostring(redis.call('PTTL', KEYS[2]))}
end
redis.call('HSET', KEYS[1], 'state', 'running', 'updated_at_ms', ARGV[3])
redis.call('HINCRBY', KEYS[3], state, -1)
redis.call('HINCRBY', KEYS[3], 'running', 1)
return {'claimed', state}

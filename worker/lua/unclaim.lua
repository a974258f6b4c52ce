-- A worker hands a claimed job back untouched (no permit came at the gate): the job returns to
-- the state it had before the claim, and its message goes back to the queue.
-- KEYS[1] job hash, KEYS[2] lock, KEYS[3] state counts hash
-- ARGV[1] lock token, ARGV[2] the state before the claim, ARGV[3] now (ms)
-- Returns 1 if handed back, 0 if the lock was no longer ours (nothing changed)
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') == 'running' then
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at_ms', ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'running', -1)
  redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
end
redis.call('DEL', KEYS[2])
return 1

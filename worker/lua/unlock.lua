-- Release a job's lock if this worker still holds it (a worker giving up on a job early).
-- KEYS[1] lock; ARGV[1] token
local lock, token = KEYS[1], ARGV[1]
if redis.call('GET', lock) == token then return redis.call('DEL', lock) end
return 0

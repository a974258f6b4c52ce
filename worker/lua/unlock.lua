-- Release a lock (a string key holding its owner's token) if this owner still holds it: the
-- credentials' login lock (worker/credentials.py).
-- KEYS[1] lock; ARGV[1] token
local lock, token = KEYS[1], ARGV[1]
if redis.call('GET', lock) == token then return redis.call('DEL', lock) end
return 0

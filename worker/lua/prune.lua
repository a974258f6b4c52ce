-- Forget rejected jobs whose records have expired: drop them from the rejected set and the
-- counts, so listings and counts match the records that still exist.
-- KEYS[1] rejected zset, KEYS[2] counts hash; ARGV[1] cutoff (ms), ARGV[2] max members,
-- ARGV[3] job key prefix
local old = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
local pruned = 0
for _, id in ipairs(old) do
  if redis.call('EXISTS', ARGV[3] .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HINCRBY', KEYS[2], 'rejected', -1)
    pruned = pruned + 1
  end
end
return pruned

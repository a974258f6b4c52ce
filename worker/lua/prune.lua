-- Forget rejected jobs whose records have expired: drop them from the rejected set and the
-- counts, so listings and counts match the records that still exist.
-- KEYS[1] rejected zset, KEYS[2] counts hash; ARGV[1] cutoff (ms), ARGV[2] max members,
-- ARGV[3] job key prefix
local rejected, counts = KEYS[1], KEYS[2]
local cutoff, most, job_prefix = ARGV[1], ARGV[2], ARGV[3]
local old = redis.call('ZRANGE', rejected, '-inf', cutoff, 'BYSCORE', 'LIMIT', 0, most)
local pruned = 0
for _, id in ipairs(old) do
  if redis.call('EXISTS', job_prefix .. id) == 0 then
    redis.call('ZREM', rejected, id)
    redis.call('HINCRBY', counts, 'rejected', -1)
    pruned = pruned + 1
  end
end
return pruned

-- Remove a schedule member only if it still has the score we gave it: if the job was scheduled
-- again in the meantime (a new retry), that newer entry must stay.
-- KEYS[1] zset; ARGV[1] member, ARGV[2] expected score (ms)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0

-- A call found the destination failing (refused, 502/503/504), or a person must fix something.
-- KEYS[1] pause hash, KEYS[2] consecutive-failures counter
-- ARGV[1] now (ms), ARGV[2] probe interval (ms), ARGV[3] failures that pause (0: pause now),
-- ARGV[4] reason, ARGV[5] how long the failure count lasts without a new failure (ms)
-- Returns {paused, until_ms, newly}: paused 1 if the destination is paused after this failure
-- (newly 1 if this failure paused it).
local pause, counter = KEYS[1], KEYS[2]
local now, interval, threshold = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reason, count_ttl = ARGV[4], ARGV[5]
local failures = redis.call('INCR', counter)
redis.call('PEXPIRE', counter, count_ttl)
local paused = redis.call('EXISTS', pause) == 1
if not paused and failures < threshold then
  return {0, 0, 0}
end
local until_ms = now + interval
redis.call('HSET', pause, 'until_ms', until_ms, 'interval_ms', interval, 'reason', reason,
           'failures', failures)
if not paused then
  redis.call('HSET', pause, 'since_ms', now, 'probes', 0)
  return {1, until_ms, 1}
end
return {1, until_ms, 0}

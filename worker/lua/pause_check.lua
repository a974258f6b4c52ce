-- Before a call: is the destination paused, and if so, is it this caller's turn to probe it?
-- KEYS[1] pause hash, KEYS[2] consecutive-failures counter
-- ARGV[1] now (ms), ARGV[2] probe interval (ms) when the pause names none
-- Returns {state, until_ms, failures}: state 0 = not paused (failures so far), 1 = paused until
-- until_ms (wait), 2 = paused but due for a probe: this caller makes the one call, and the next
-- probe is due at until_ms.
local pause, counter = KEYS[1], KEYS[2]
local now, default_interval = tonumber(ARGV[1]), ARGV[2]
local until_ms = tonumber(redis.call('HGET', pause, 'until_ms') or '0')
if until_ms == 0 then
  return {0, 0, tonumber(redis.call('GET', counter) or '0')}
end
if now < until_ms then
  return {1, until_ms, 0}
end
local interval = tonumber(redis.call('HGET', pause, 'interval_ms') or default_interval)
redis.call('HSET', pause, 'until_ms', now + interval)
redis.call('HINCRBY', pause, 'probes', 1)
return {2, now + interval, 0}

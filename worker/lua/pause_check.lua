-- Before a call: is the destination paused, and if so, is it this caller's turn to probe it?
-- KEYS[1] pause hash, KEYS[2] consecutive-failures counter
-- ARGV[1] now (ms), ARGV[2] probe interval (ms) when the pause names none
-- Returns {state, until_ms, failures}: state 0 = not paused (failures so far), 1 = paused until
-- until_ms (wait), 2 = paused but due for a probe: this caller makes the one call, and the next
-- probe is due at until_ms.
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until_ms') or '0')
if until_ms == 0 then
  return {0, 0, tonumber(redis.call('GET', KEYS[2]) or '0')}
end
local now = tonumber(ARGV[1])
if now < until_ms then
  return {1, until_ms, 0}
end
local interval = tonumber(redis.call('HGET', KEYS[1], 'interval_ms') or ARGV[2])
redis.call('HSET', KEYS[1], 'until_ms', now + interval)
redis.call('HINCRBY', KEYS[1], 'probes', 1)
return {2, now + interval, 0}

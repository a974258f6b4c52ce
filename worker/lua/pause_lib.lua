-- A destination's pause, as a call sees it before it is made: prepended to pause_check.lua and
-- to claim.lua (worker/scripts.py), which checks it in the step that claims a job.
--
-- pause_verdict(pause hash, consecutive-failures counter, now (ms), probe interval (ms) when the
-- pause names none) returns {state, until_ms, failures}: state 0 = not paused (failures so far),
-- 1 = paused until until_ms (wait), 2 = paused but due for a probe: this caller makes the one
-- call, and the next probe is due at until_ms.
local function pause_verdict(pause, counter, now, default_interval)
  -- A healthy destination has neither key: one command says so.
  if redis.call('EXISTS', pause, counter) == 0 then return {0, 0, 0} end
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
end

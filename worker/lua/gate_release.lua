-- Give a permit back, record what the call saw, and hand free permits over.
-- ARGV[1] now (ms) or '', ARGV[2] token, ARGV[3] the call's latency (ms),
-- ARGV[4] what the destination said: 'ok' (a normal answer: a latency sample), 'busy' (Noojee
-- 109: it queued us too long) or 'none' (no answer worth measuring: transport error, 5xx),
-- ARGV[5] permits held when the call was granted, ARGV[6] the limit epoch it was granted under,
-- ARGV[7] the shortest window (ms), ARGV[8] the fewest answers in a window
-- Returns {1 if the lease was still held else 0, limit, permits held now (-1: not counted, as
-- nobody waited)} and, when this release closed a window of the adaptive limit, {..., window
-- fields, policy fields}: the caller decides
-- the next limit (worker/gate_policy.py) and applies it with gate_adjust.lua.
--
-- Windows: the answers to calls granted under the current limit (its epoch), at least
-- ARGV[7] ms and max(ARGV[8], 2 x limit) of them, or any busy answer. A window closes exactly
-- once fleet-wide, here, and the next one does not close until its decision is applied (or
-- PENDING_MS passed: its closer died), so decisions follow one another in order.
local now, token = clock(ARGV[1]), ARGV[2]
local latency, signal = tonumber(ARGV[3]), ARGV[4]
local inflight, epoch = tonumber(ARGV[5]), tonumber(ARGV[6])
local window_ms, min_samples = tonumber(ARGV[7]), tonumber(ARGV[8])
local PENDING_MS = math.max(1000, 4 * window_ms)
local BUSY, SAMPLES = P .. 'busy', P .. 'samples'

local function observe()
  if not get('w_start') then reset_window(now) end
  if epoch == num('epoch', 0) then  -- answers to calls granted under an older limit do not count
    if signal == 'busy' then
      put('w_busy', num('w_busy', 0) + 1)
    elseif signal == 'ok' then
      local log_ms = math.log(math.max(latency, 0.1))
      put('w_n', num('w_n', 0) + 1)
      put('w_log', num('w_log', 0) + log_ms)
      put('w_log2', num('w_log2', 0) + log_ms * log_ms)
      put('w_held', num('w_held', 0) + inflight)
    end
  end
  local pending = num('pending_at', 0)
  if pending > 0 and now - pending < PENDING_MS then return nil end
  local limit, n, busy = limit_now(), num('w_n', 0), num('w_busy', 0)
  local enough = n >= math.max(min_samples, 2 * limit) and now - num('w_start', now) >= window_ms
  if busy == 0 and not enough then return nil end
  local seq = num('seq_window', 0) + 1
  put('seq_window', seq)
  local window = {'seq', tostring(seq), 'limit', limit, 'n', n, 'log_sum', get('w_log') or '0',
                  'log_sq_sum', get('w_log2') or '0', 'held_sum', get('w_held') or '0',
                  'busy', busy, 'end_ms', now}
  reset_window(now)
  put('pending_at', now)
  put('pending', tostring(seq))
  return window
end

local held_before = redis.call('ZREM', LEASES, token)
if signal == 'busy' then
  redis.call('ZADD', BUSY, now, token)
  redis.call('ZREMRANGEBYSCORE', BUSY, '-inf', now - 300000)
  put('busy_total', num('busy_total', 0) + 1)
elseif signal == 'ok' then
  redis.call('LPUSH', SAMPLES, now .. ':' .. latency)
  local n = num('samples_n', 0) + 1
  put('samples_n', n % 50)
  if n >= 50 then redis.call('LTRIM', SAMPLES, 0, 499) end
  -- The calls' mean latency, recent ones weighing most: how fast the line of waiters moves.
  local mean = num('lat_ms', 0)
  if mean <= 0 then mean = latency else mean = mean + (latency - mean) / 16 end
  put('lat_ms', mean)
end
local window = nil
if get('adaptive') == '1' then window = observe() end
local held = hand_off(now) or -1
if window then
  return finish({held_before, limit_now(), held, window, redis.call('HGETALL', POLICY)})
end
return finish({held_before, limit_now(), held})

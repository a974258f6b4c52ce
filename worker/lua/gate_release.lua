-- Give a permit back, tell the adaptive limit what the call saw, and hand free permits over.
-- ARGV[1] now (ms) or '', ARGV[2] token, ARGV[3] the call's latency (ms),
-- ARGV[4] what the destination said: 'ok' (a normal answer: a latency sample), 'busy' (Noojee
-- 109: it queued us too long) or 'none' (no answer worth measuring: transport error, 5xx),
-- ARGV[5] permits held when the call was granted, ARGV[6] the limit epoch it was granted under
-- Returns {1 if the lease was still held else 0, limit, permits held now}
--
-- The adaptive limit (after TCP Vegas, Netflix's Gradient2 and Envoy's adaptive concurrency):
-- calls are grouped into windows of at least WINDOW_MS and enough samples. The latency floor is
-- the lowest window mean of the last FLOOR_MS: the PBX's service time with nothing queued. A PBX
-- with S slots and L of our calls in flight has a mean latency of L/S times that floor, so the
-- calls queued inside it are estimated as L * (1 - floor / mean) (Vegas's queue estimate).
-- More than BETA queued: the limit drops straight to the estimated slots. Less than ALPHA while
-- the limit binds: it grows (doubling until the first cut, then by one). A step up that shows
-- queueing backs the next probe off (up to MAX_GAP windows), so a PBX at capacity sees one call
-- too many only now and then. A busy answer (109) halves the limit at once. Outside load on the
-- shared PBX shows up the same way, as latency, and the limit gives those slots back.
local WINDOW_MS, MIN_SAMPLES = 500, 10
local ALPHA, BETA = 0.4, 0.7
local MAX_GAP = 4
local FLOOR_MS = 60000
local BUSY_CUT = 0.5

local now, token = clock(ARGV[1]), ARGV[2]
local latency, signal = tonumber(ARGV[3]), ARGV[4]
local inflight, epoch = tonumber(ARGV[5]), tonumber(ARGV[6])
local BUSY, SAMPLES, WINDOWS = P .. 'busy', P .. 'samples', P .. 'windows'

local function window_floor()
  local floor = nil
  for _, item in ipairs(redis.call('LRANGE', WINDOWS, 0, -1)) do
    local at, mean = string.match(item, '^(%d+):(.+)$')
    if tonumber(at) >= now - FLOOR_MS then
      mean = tonumber(mean)
      if floor == nil or mean < floor then floor = mean end
    end
  end
  return floor
end

local function close_window(limit, max)
  local n, busy = num('w_n', 0), num('w_busy', 0)
  local gap, waited, probing = num('gap', 0), num('waited', 0), num('probing', 0)
  local slow = num('slow', 1)
  local new, infl = limit, 0
  if busy > 0 then
    new = math.floor(limit * BUSY_CUT)
    gap, waited, probing, slow = MAX_GAP, 0, 0, 0
  else
    local mean = num('w_sum', 0) / n
    infl = num('w_inflight', 0) / n
    redis.call('LPUSH', WINDOWS, now .. ':' .. mean)
    redis.call('LTRIM', WINDOWS, 0, 299)
    local floor = window_floor()
    local queued = infl * (1 - floor / mean)
    if queued > BETA then
      new = math.min(limit - 1, math.floor(infl * floor / mean + 0.5))
      if probing == 1 or slow == 1 then gap = math.min(MAX_GAP, math.max(1, gap * 2)) end
      waited, probing, slow = 0, 0, 0
    elseif queued < ALPHA and infl >= limit - 0.5 then
      if probing == 1 then gap = 0 end  -- the last step up queued nothing: keep climbing
      if waited >= gap then
        if slow == 1 then new = limit * 2 else new = limit + 1 end
        waited, probing = 0, 1
      else
        waited, probing = waited + 1, 0
      end
    else
      probing = 0
    end
  end
  new = math.max(1, math.min(new, max))
  set_limit(new, now)
  redis.call('HSET', STATE, 'gap', gap, 'waited', waited, 'probing', probing, 'slow', slow,
             'w_start', now, 'w_n', 0, 'w_sum', 0, 'w_inflight', 0, 'w_busy', 0)
  redis.call('LPUSH', P .. 'history', now .. ':' .. new .. ':' .. string.format('%.2f', infl))
  redis.call('LTRIM', P .. 'history', 0, 1439)
end

local function observe()
  if not redis.call('HGET', STATE, 'w_start') then
    redis.call('HSET', STATE, 'w_start', now, 'w_n', 0, 'w_sum', 0, 'w_inflight', 0, 'w_busy', 0)
  end
  if signal == 'busy' then
    redis.call('HINCRBY', STATE, 'w_busy', 1)
  elseif signal == 'ok' and epoch == num('epoch', 0) then
    redis.call('HINCRBY', STATE, 'w_n', 1)
    redis.call('HINCRBYFLOAT', STATE, 'w_sum', latency)
    redis.call('HINCRBYFLOAT', STATE, 'w_inflight', inflight)
  end
  local limit, n = limit_now(), num('w_n', 0)
  local enough = n >= math.max(MIN_SAMPLES, 2 * limit) and now - num('w_start', now) >= WINDOW_MS
  if num('w_busy', 0) > 0 or enough then close_window(limit, num('max', limit)) end
end

local held_before = redis.call('ZREM', LEASES, token)
redis.call('DEL', wake_key(token))
if signal == 'busy' then
  redis.call('ZADD', BUSY, now, token)
  redis.call('ZREMRANGEBYSCORE', BUSY, '-inf', now - 300000)
  redis.call('HINCRBY', STATE, 'busy_total', 1)
elseif signal == 'ok' then
  redis.call('LPUSH', SAMPLES, now .. ':' .. latency)
  redis.call('LTRIM', SAMPLES, 0, 499)
end
if redis.call('HGET', STATE, 'adaptive') == '1' then observe() end
reap(now)
local held = hand_off(now)
return {held_before, limit_now(), held}

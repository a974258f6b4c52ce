-- The concurrency gate's shared part: prepended to every gate_*.lua script when it is loaded
-- (worker/gate.py), so grant, release and expiry stay one atomic step each.
--
-- KEYS[1] is the gate's key prefix P (e.g. "cs:gate:noojee:3f2a9c1e0b:"); KEYS[2] the set of
-- every gate's name (e.g. "cs:gates"). The gate's keys:
--   P.."leases"     zset  lease token -> expiry (ms)            permits held now
--   P.."waiting:0"  zset  token -> arrival number               realtime waiters, FIFO
--   P.."waiting:1"  zset  token -> arrival number               bulk waiters, FIFO
--   P.."deadline"   hash  waiter token -> when it stops waiting (ms)
--   P.."seq"        string, arrival counter
--   P.."wake:"..tok list  a permit handed to a waiter (one element; the waiter BLPOPs it)
--   P.."state"      hash  limit, epoch, config, calls' mean latency, the adaptive limit's window
--   P.."policy"     hash  the adaptive limit's controller state (worker/gate_policy.py)
--   P.."samples"    list  "ms:latency" of recent calls (for p50/p95 in `gate status`)
--   P.."busy"       zset  busy answers (109) by time
--   P.."history"    list  "ms:limit:in flight" once per window (the limit chart)
-- Every time is the server's (TIME), unless a caller passes one (simulated time in tests).
-- Dynamic keys (wake lists) make this unsuitable for Redis Cluster, as is Celery's transport.

local P = KEYS[1]
local LEASES, STATE = P .. 'leases', P .. 'state'
local WAITING = {P .. 'waiting:0', P .. 'waiting:1'}
local DEADLINE = P .. 'deadline'
local POLICY = P .. 'policy'

local function clock(given)
  if given ~= nil and given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function num(field, default)
  local v = redis.call('HGET', STATE, field)
  if v then return tonumber(v) end
  return default
end

local function limit_now() return num('limit', 1) end

local function wake_key(token) return P .. 'wake:' .. token end

-- Drop leases whose holder stopped renewing them (a killed worker): its permits come back.
local function reap(now)
  local gone = redis.call('ZREMRANGEBYSCORE', LEASES, '-inf', now)
  if gone > 0 then redis.call('HINCRBY', STATE, 'expired', gone) end
  return gone
end

-- The next waiter still waiting, realtime before bulk, first come first served.
local function pop_waiter(now)
  for _, set in ipairs(WAITING) do
    while true do
      local head = redis.call('ZRANGE', set, 0, 0)
      if #head == 0 then break end
      local token = head[1]
      redis.call('ZREM', set, token)
      local deadline = redis.call('HGET', DEADLINE, token)
      redis.call('HDEL', DEADLINE, token)
      if deadline and tonumber(deadline) >= now then return token end
    end
  end
  return nil
end

-- Hand free permits to waiters: the lease is theirs before they wake (no race, no polling).
local function hand_off(now)
  local limit, ttl = limit_now(), num('ttl_ms', 10000)
  local held = redis.call('ZCARD', LEASES)
  while held < limit do
    local token = pop_waiter(now)
    if not token then break end
    redis.call('ZADD', LEASES, now + ttl, token)
    redis.call('RPUSH', wake_key(token), (held + 1) .. ':' .. num('epoch', 0))
    redis.call('PEXPIRE', wake_key(token), ttl)
    held = held + 1
  end
  return held
end

-- Start a new limit; samples of calls granted under an older limit no longer count.
local function set_limit(new, now)
  if new ~= limit_now() then redis.call('HINCRBY', STATE, 'epoch', 1) end
  redis.call('HSET', STATE, 'limit', new)
end

-- Start a new window of the adaptive limit: nothing measured yet.
local function reset_window(now)
  redis.call('HSET', STATE, 'w_start', now, 'w_n', 0, 'w_log', 0, 'w_log2', 0, 'w_held', 0,
             'w_busy', 0)
end

local function waiting_count()
  return redis.call('ZCARD', WAITING[1]) + redis.call('ZCARD', WAITING[2])
end

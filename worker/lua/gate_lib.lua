-- The concurrency gate's shared part: prepended to every gate_*.lua script when it is loaded
-- (worker/gate.py), so grant, release and expiry stay one atomic step each.
--
-- KEYS[1] is the gate's key prefix P (e.g. "cs:gate:noojee:3f2a9c1e0b:"); KEYS[2] the set of
-- every gate's name (e.g. "cs:gates"). The gate's keys:
--   P.."leases"     zset  lease token -> expiry (ms)            permits held now
--   P.."waiters"    zset  "token|until" -> place in line: its arrival number, plus BULK for a
--                         bulk waiter (realtime waiters come first, each priority first come
--                         first served; one set, so a hand-off pops the next with one ZPOPMIN).
--                         until: when the waiter stops waiting (ms), in the member itself, so
--                         the pop that hands a permit over says whether the waiter still waits
--   P.."seq"        string, arrival counter
--   P.."wake:"..tok list  a permit handed to a waiter (one element; the waiter BLPOPs it)
--   P.."state"      hash  limit, epoch, config, calls' mean latency, the adaptive limit's window
--                         (read and written once per script: see load_state and finish)
--   P.."policy"     hash  the adaptive limit's controller state (worker/gate_policy.py)
--   P.."samples"    list  "ms:latency" of recent calls, newest first (for p50/p95 in `gate
--                         status`): 500 kept, trimmed every 50th sample
--   P.."busy"       zset  busy answers (109) by time
--   P.."history"    list  "ms:limit:in flight" once per window (the limit chart)
-- Every time is the server's (TIME), unless a caller passes one (simulated time in tests).
-- Dynamic keys (wake lists) make this unsuitable for Redis Cluster, as is Celery's transport.

local P = KEYS[1]
local LEASES, STATE = P .. 'leases', P .. 'state'
local WAITERS = P .. 'waiters'
-- Added to a bulk waiter's arrival number: every realtime waiter sorts before every bulk one
-- (2^40: a score stays an exact integer, and the arrival counter would need 35 years at a
-- thousand waiters a second to reach it).
local BULK = 1099511627776
local POLICY = P .. 'policy'

local function clock(given)
  if given ~= nil and given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The state hash is read once per script (one HMGET, on first use) and written once, at the end
-- (one HSET of the fields that changed, in finish()): a grant or a release touches a dozen of
-- its fields, and a command each was most of the gate's cost.
local STATE_FIELDS = {'limit', 'epoch', 'ttl_ms', 'adaptive', 'max', 'target', 'lat_ms',
                      'w_start', 'w_n', 'w_log', 'w_log2', 'w_held', 'w_busy', 'pending',
                      'pending_at', 'seq_window', 'expired', 'busy_total', 'samples_n'}
local S, CHANGED, DROPPED, LOADED = {}, {}, {}, false

local function load_state()
  if LOADED then return end
  local values = redis.call('HMGET', STATE, unpack(STATE_FIELDS))
  for i, field in ipairs(STATE_FIELDS) do S[field] = values[i] or nil end
  LOADED = true
end

local function get(field)
  load_state()
  return S[field]
end

local function num(field, default)
  local v = tonumber(get(field) or '')
  if v then return v end
  return default
end

local function put(field, value)
  load_state()
  if type(value) == 'number' then value = string.format('%.17g', value) end
  S[field], CHANGED[field], DROPPED[field] = value, true, nil
end

local function drop(field)
  load_state()
  S[field], CHANGED[field], DROPPED[field] = nil, nil, true
end

-- Write what changed; every gate script returns through it.
local function finish(result)
  local flat, gone = {}, {}
  for field in pairs(CHANGED) do
    flat[#flat + 1] = field
    flat[#flat + 1] = S[field]
  end
  for field in pairs(DROPPED) do gone[#gone + 1] = field end
  if #flat > 0 then redis.call('HSET', STATE, unpack(flat)) end
  if #gone > 0 then redis.call('HDEL', STATE, unpack(gone)) end
  return result
end

local function limit_now() return num('limit', 1) end

local function wake_key(token) return P .. 'wake:' .. token end

-- Drop leases whose holder stopped renewing them (a killed worker): its permits come back.
local function reap(now)
  local gone = redis.call('ZREMRANGEBYSCORE', LEASES, '-inf', now)
  if gone > 0 then put('expired', num('expired', 0) + gone) end
  return gone
end

-- A waiter's member in WAITERS, and back.
local function waiter(token, until_ms) return token .. '|' .. string.format('%d', until_ms) end
local function parse_waiter(member)
  local token, until_ms = string.match(member, '^(.*)|(%d+)$')
  return token or member, tonumber(until_ms or '0')
end

local function anyone_waiting()
  return redis.call('EXISTS', WAITERS) > 0
end

-- The next waiter still waiting, realtime before bulk, first come first served.
local function pop_waiter(now)
  while true do
    local head = redis.call('ZPOPMIN', WAITERS)
    if #head == 0 then return nil end
    local token, until_ms = parse_waiter(head[1])
    if until_ms >= now then return token end
  end
end

-- Hand free permits to waiters: the lease is theirs before they wake (no race, no polling).
-- Returns the permits out after it; with nobody waiting, nothing is counted and ``held`` (what
-- the caller knew, maybe nil) comes back.
local function hand_off(now, held)
  if not anyone_waiting() then return held end
  local limit, ttl = limit_now(), num('ttl_ms', 10000)
  held = redis.call('ZCARD', LEASES)
  -- Leases of holders that stopped renewing (killed workers) count only while the gate looks
  -- full: a release usually leaves room, and then there is nothing to drop first.
  if held >= limit and reap(now) > 0 then held = redis.call('ZCARD', LEASES) end
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
local function set_limit(new)
  if new ~= limit_now() then put('epoch', num('epoch', 0) + 1) end
  if num('limit', nil) ~= new then put('limit', new) end
end

-- Start a new window of the adaptive limit: nothing measured yet.
local function reset_window(now)
  put('w_start', now)
  for _, field in ipairs({'w_n', 'w_log', 'w_log2', 'w_held', 'w_busy'}) do put(field, 0) end
end

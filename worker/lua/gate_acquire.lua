-- Take a permit now, or join the waiters (realtime ahead of bulk) until a release hands one over.
-- ARGV[1] now (ms) or '', ARGV[2] token, ARGV[3] priority (0 realtime, 1 bulk),
-- ARGV[4] lease ttl (ms), ARGV[5] how long to wait (ms; 0 = do not wait),
-- ARGV[6] adaptive (1/0), ARGV[7] initial limit, ARGV[8] maximum limit, ARGV[9] target (label),
-- ARGV[10] the gate's name, added to the registry of gates KEYS[2] (for `gate status`, metrics),
-- ARGV[11] '1' if this token asked before (it waits: a release may have handed it a permit),
-- ARGV[12] when its place was to lapse, as the previous answer said ('' if it has none)
-- Returns {1, permits held after the grant, limit epoch} | {0, ms until the waiter should look
-- again, when its place lapses unless it asks again (ms), waiters ahead of it, the calls' mean
-- latency (ms, 0 if none yet), limit}: how long its turn should take (only {0, ms, lapses} to a
-- token that asked before). A waiter that pops its wake list gets "permits held:epoch" instead.
local now, token, prio = clock(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local ttl_text, wait = ARGV[4], tonumber(ARGV[5])
local adaptive, initial, max_text = ARGV[6], tonumber(ARGV[7]), ARGV[8]
local target, gate_name, gates = ARGV[9], ARGV[10], KEYS[2]
local asked_before, lapsed = ARGV[11] == '1', ARGV[12]
local ttl, max = tonumber(ttl_text), tonumber(max_text)

-- The configuration travels with every acquire, so a changed setting applies fleet-wide at
-- once; it is written only when it differs from what the gate holds.
if get('ttl_ms') ~= ttl_text or get('adaptive') ~= adaptive or get('max') ~= max_text
    or get('target') ~= target then
  put('ttl_ms', ttl_text)
  put('adaptive', adaptive)
  put('max', max_text)
  put('target', target)
  redis.call('SADD', gates, gate_name)
end
local limit = num('limit', nil)
if adaptive ~= '1' then
  limit = max
elseif not limit then
  limit = math.min(initial, max)
else
  limit = math.max(1, math.min(limit, max))
end
set_limit(limit)

local held = redis.call('ZCARD', LEASES)
local oldest = nil  -- the lease that expires first, {token, expiry}, once read
if held >= limit then
  -- Leases whose holders stopped renewing them (killed workers) come back first; the oldest
  -- lease says whether there are any, and a waiter needs it below anyway.
  oldest = redis.call('ZRANGE', LEASES, 0, 0, 'WITHSCORES')
  if #oldest == 2 and tonumber(oldest[2]) <= now then
    held = held - reap(now)
    oldest = nil
  end
end
-- Waiters go first: a free permit goes to them (hand_off) before anyone new.
if held < limit then held = hand_off(now, held) end
if asked_before and redis.call('ZSCORE', LEASES, token) then  -- handed to us (now or before)
  redis.call('DEL', wake_key(token))
  return finish({1, held, num('epoch', 0)})
end
if held < limit then
  redis.call('ZADD', LEASES, now + ttl, token)
  return finish({1, held + 1, num('epoch', 0)})
end
if wait <= 0 then return finish({0, 0}) end
-- A waiter is leased too: its place lasts one lease unless it asks again (a live waiter looks
-- again within a third of one), so a killed worker's waiters are passed over within a lease
-- instead of being handed permits nobody will use until the end of their whole wait. When it
-- lapses is part of its member: asking again moves its place to a new member.
local lapses = now + math.min(wait, ttl)
local member, place = waiter(token, lapses), nil
if asked_before and lapsed ~= '' then
  local before = waiter(token, tonumber(lapsed))
  place = redis.call('ZSCORE', WAITERS, before)
  if place then redis.call('ZREM', WAITERS, before) end
end
if not place then
  place = string.format('%.0f', redis.call('INCR', P .. 'seq') + prio * BULK)
end
redis.call('ZADD', WAITERS, place, member)
-- Look again when the waiting ends or when the oldest lease would expire (a dead holder's).
if not oldest then oldest = redis.call('ZRANGE', LEASES, 0, 0, 'WITHSCORES') end
local recheck = math.min(wait, math.floor(ttl / 3))
if #oldest == 2 then recheck = math.min(recheck, tonumber(oldest[2]) - now + 1) end
recheck = math.max(1, recheck)
-- How long its turn should take is asked once, on arrival (worker/gate.py's patience).
if asked_before then return finish({0, recheck, lapses}) end
local ahead = redis.call('ZRANK', WAITERS, member)  -- (a bulk waiter: every realtime one too)
return finish({0, recheck, lapses, ahead, math.floor(num('lat_ms', 0)), limit})

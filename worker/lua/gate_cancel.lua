-- A waiter gives up. If a permit reached it meanwhile, it keeps it (and must use or release it).
-- ARGV[1] now (ms) or '', ARGV[2] token, ARGV[3] when its place lapses, as acquire last said
-- ('' if it never waited)
-- Returns {1, permits held, epoch} if the token holds a permit, else {0, 0, 0}
local now, token, lapses = clock(ARGV[1]), ARGV[2], ARGV[3]
reap(now)
local held = hand_off(now)
redis.call('DEL', wake_key(token))
if redis.call('ZSCORE', LEASES, token) then
  return finish({1, held or redis.call('ZCARD', LEASES), num('epoch', 0)})
end
if lapses and lapses ~= '' then redis.call('ZREM', WAITERS, waiter(token, tonumber(lapses))) end
return finish({0, 0, 0})

-- A waiter gives up. If a permit reached it meanwhile, it keeps it (and must use or release it).
-- ARGV[1] now (ms) or '', ARGV[2] token
-- Returns {1, permits held, epoch} if the token holds a permit, else {0, 0, 0}
local now, token = clock(ARGV[1]), ARGV[2]
reap(now)
local held = hand_off(now)
redis.call('DEL', wake_key(token))
if redis.call('ZSCORE', LEASES, token) then
  return finish({1, held or redis.call('ZCARD', LEASES), num('epoch', 0)})
end
redis.call('ZREM', WAITERS, token)
redis.call('HDEL', DEADLINE, token)
return finish({0, 0, 0})

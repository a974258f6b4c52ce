-- Apply the adaptive limit's decision on a window that gate_release.lua closed.
-- ARGV[1] now (ms) or '', ARGV[2] the window's number, ARGV[3] the new limit, ARGV[4] the mean
-- permits held in that window (for the limit chart), ARGV[5..] the controller's state as field,
-- value pairs (worker/gate_policy.py PolicyState.fields)
-- Returns {1 if applied else 0, limit}: a decision is dropped if a newer window was closed since
-- (its closer took too long, and the fleet went on without it).
local now, seq, new = clock(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local mean_held = ARGV[4]
if get('pending') ~= seq then return {0, limit_now()} end
local max = num('max', new)
new = math.max(1, math.min(new, max))
if new ~= limit_now() then reset_window(now) end  -- calls granted under the old limit no longer count
set_limit(new)
redis.call('DEL', POLICY)
if #ARGV >= 6 then redis.call('HSET', POLICY, unpack(ARGV, 5)) end
drop('pending')
drop('pending_at')
redis.call('LPUSH', P .. 'history', now .. ':' .. new .. ':' .. mean_held)
redis.call('LTRIM', P .. 'history', 0, 1439)
hand_off(now)
return finish({1, limit_now()})

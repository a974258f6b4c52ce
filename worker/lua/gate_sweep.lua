-- Give back the permits of processes known dead, and pass over their waiters, now rather than
-- when their leases run out: a killed worker then costs the gate one sweep (a fraction of a
-- second), not a lease.
-- ARGV[1] now (ms) or '', ARGV[2..] the dead processes ("host/pid"): a token is "host/pid/..."
-- Returns {permits given back, waiters passed over}
local now = clock(ARGV[1])
local dead = {}
for i = 2, #ARGV do dead[ARGV[i]] = true end
local function owner(token) return string.match(token, '^(.-/%d+)/') end
local gone, passed = 0, 0
for _, token in ipairs(redis.call('ZRANGE', LEASES, 0, -1)) do
  if dead[owner(token) or ''] then
    redis.call('ZREM', LEASES, token)
    redis.call('DEL', wake_key(token))
    gone = gone + 1
  end
end
if gone > 0 then put('expired', num('expired', 0) + gone) end
for _, member in ipairs(redis.call('ZRANGE', WAITERS, 0, -1)) do
  if dead[owner(parse_waiter(member)) or ''] then
    redis.call('ZREM', WAITERS, member)
    passed = passed + 1
  end
end
if gone > 0 then hand_off(now) end
return finish({gone, passed})

-- Extend the leases of calls still running. ARGV[1] now (ms) or '', ARGV[2] ttl (ms),
-- ARGV[3..] tokens. Returns the tokens whose lease was already gone (expired and reclaimed).
local now, ttl = clock(ARGV[1]), tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV do
  local token = ARGV[i]
  if redis.call('ZADD', LEASES, 'XX', 'CH', now + ttl, token) == 0
     and not redis.call('ZSCORE', LEASES, token) then
    lost[#lost + 1] = token
  end
end
return lost

-- Take due members of a schedule (retries, or the submit outbox) for republishing. Each member
-- taken is pushed ARGV[2] ms into the future rather than removed, so a scheduler that dies before
-- publishing leaves it to be taken again; `release.lua` removes it once published.
-- KEYS[1] zset; ARGV[1] now (ms), ARGV[2] lease (ms), ARGV[3] max members
-- Returns a flat list: id, lease score, id, lease score, ...
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
local leased = tonumber(ARGV[1]) + tonumber(ARGV[2])
local out = {}
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], leased, id)
  out[#out + 1] = id
  out[#out + 1] = tostring(leased)
end
return out

-- Take due members of a schedule (retries, requeues) for republishing. Each member
-- taken moves to the schedule's lease set until ARGV[2] ms from now; `Ledger.release` removes it
-- from there once published. A republisher that dies before publishing leaves its lease to
-- expire, and the member is due again. Keeping leases apart means nothing written to the
-- schedule meanwhile (a new retry, a recheck) can be removed by a release.
-- KEYS[1] zset, KEYS[2] its lease zset; ARGV[1] now (ms), ARGV[2] lease (ms), ARGV[3] max members
-- Returns the ids taken.
local expired = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], 'NX', ARGV[1], id)
end
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
local leased = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], leased, id)
end
return due

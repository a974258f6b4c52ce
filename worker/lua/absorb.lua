-- Coalescing: the head of an entity's line, just claimed, takes over the jobs held behind it.
-- Its payload becomes the merged one (the worker merged them with the job kind's own rules), the
-- absorbed jobs end 'merged' (naming the job that carries them), and jobs whose version is older
-- than one already delivered end 'superseded' (never sent). All or nothing: if any of them is
-- no longer held behind the head, nothing changes and the head is sent as it was.
-- ARGV[1..5] as every ledger script (ledger_lib.lua)
local id, token, payload, version, vkey = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local vjob, top_seq, top_id, priority = ARGV[11], ARGV[12], ARGV[13], ARGV[14]
local retry_until, entry, carried = ARGV[15], ARGV[16], ARGV[17]
-- the head, our lock token, the merged payload (JSON), the merged job's version as shown, its
-- sort key ('' for none) and the job that gave it, the submission number and id of the newest
-- job it now carries, its priority (realtime if any absorbed job was), the latest retry window
-- of them (ms), its history entry (JSON), the jobs it carries as submitted ('' if versions play
-- no part: a merged payload can then be merged again as it is)
local FIRST, PER_JOB = 18, 5
-- then PER_JOB per job taken over: id, 'merged' or 'superseded', the job that carries or
-- supersedes it, its reason, its history entry (JSON)
-- Returns 'ok' | 'lost' (our lock is gone) | 'changed' (a job is no longer held behind us)
local head = read(id, {'entity', 'state', 'lock'})
if head.lock ~= token then return 'lost' end
if head.state ~= 'running' or not head.entity then return 'changed' end
local line = line_key(head.entity)
for a = FIRST, #ARGV, PER_JOB do
  local other = read(ARGV[a], {'entity', 'state'})
  if other.state ~= 'held' or other.entity ~= head.entity
      or not redis.call('LPOS', line, ARGV[a]) then
    return 'changed'
  end
end

for a = FIRST, #ARGV, PER_JOB do
  local other, outcome, by, reason = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local link = outcome == 'merged' and 'merged_into' or 'superseded_by'
  local batch = redis.call('HGET', job_key(other), 'batch')
  redis.call('HSET', job_key(other), link, by, 'last_code', outcome, 'last_reason', reason)
  recount('held', outcome, batch)
  note(other, ARGV[a + 4])
  outline(other, outcome, {'entity', 'version', 'last_code', 'last_reason', link})
  redis.call('EXPIRE', history_key(other), RETENTION_S)
  redis.call('LREM', line, 1, other)
end

local fields = {'payload', payload, 'top_seq', top_seq, 'top_id', top_id,
                'retry_until_ms', retry_until, 'updated_at_ms', NOW}
if version ~= '' then
  for _, pair in ipairs({{'version', version}, {'vkey', vkey}, {'vjob', vjob}}) do
    fields[#fields + 1] = pair[1]
    fields[#fields + 1] = pair[2]
  end
end
for _, pair in ipairs({{'priority', priority}, {'carried', carried}}) do
  if pair[2] ~= '' then
    fields[#fields + 1] = pair[1]
    fields[#fields + 1] = pair[2]
  end
end
redis.call('HSET', job_key(id), unpack(fields))
note(id, entry)
return 'ok'

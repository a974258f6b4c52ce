-- Keep "queued" a promise for one queue: feed ready jobs onto its broker lists while they have
-- room, and push again the message of every queued job that was dispatched more than `grace`
-- ago but is neither on a list nor with a worker. A worker takes a message with BRPOP and
-- keeps it in memory; its channel adds it to the unacked index (tag -> when taken) within
-- worker/transport.py's REPORT_S, and only if it still holds it by then (a claimed job is the
-- ledger's: nearly every message is acked before it is ever listed). A worker killed with
-- messages it had taken but not claimed loses them (and a Redis restart can lose the last
-- second of writes): a message a worker took more than `held` ago without claiming its job
-- counts as lost too. A job found so is sent again; a message that was only in transit or with
-- a slow worker becomes a duplicate, which its claim drops.
--
-- A message a worker has just taken is in neither place for a moment (BRPOP has answered, the
-- index follows within REPORT_S), however long it waited on the list before: so a job is sent
-- again only if it was missing at an earlier round too, at least `confirm` ms before
-- (P..'missing:'..queue: id -> when first seen missing, rewritten every round, so it holds
-- only the jobs missing since the round before).
-- ARGV[1..5] as every ledger script (ledger_lib.lua)
local queue, grace, unacked, held = ARGV[6], tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
-- the queue, how long a message may be in transit (ms), kombu's unacked hash name (its index,
-- the same name with '_index', which workers keep: delivery tag -> when a worker took it, in
-- seconds), how long a worker may hold a message without claiming its job (ms)
local confirm = tonumber(ARGV[10])
-- how long a job must have been missing, seen at two rounds, before it is sent again (ms; 0:
-- at once)
local MISSING = P .. 'missing:' .. queue
-- Returns {ready jobs fed onto the lists, id of each job whose message was pushed again...}
local fed = top_up(queue, 1000)
local present = {}
for _, priority in ipairs({'realtime', 'bulk'}) do
  local list = redis.call('HGET', P .. 'message:' .. queue .. ':' .. priority, 'list')
  if list then
    -- The lists hold at most WINDOW messages each: this reads a bounded amount, however large
    -- the backlog. A message's header "id" is its task id, which is the job id.
    for _, message in ipairs(redis.call('LRANGE', list, 0, -1)) do
      local id = string.match(message, '"id": "([^"]+)"')
      if id then present[id] = true end
    end
  end
end
-- Our messages' delivery tags are their job ids and when they were pushed: '{id}.{ms}'
-- (worker/dispatch.py).
local taken_before = (NOW - held) / 1000
local with_workers = redis.call('ZRANGE', unacked .. '_index', taken_before, '+inf', 'BYSCORE')
for _, tag in ipairs(with_workers) do present[string.match(tag, '^[^.]+')] = true end
local seen_before = {}
local flat = redis.call('HGETALL', MISSING)
for i = 1, #flat, 2 do seen_before[flat[i]] = tonumber(flat[i + 1]) end
local still_missing = {}
local result = {fed}
local dispatched = dispatched_key(queue)
for _, id in ipairs(redis.call('ZRANGE', dispatched, '-inf', NOW - grace, 'BYSCORE')) do
  if not present[id] then
    local job = read(id, {'state', 'priority'})
    local since = seen_before[id] or NOW
    if job.state ~= 'queued' then
      redis.call('ZREM', dispatched, id)  -- claimed, ended or moved on since
    elseif NOW - since < confirm then  -- maybe being taken right now: look again next round
      still_missing[#still_missing + 1] = {id, since}
    else
      redis.call('ZREM', dispatched, id)
      if not push(id, queue, job.priority) then redis.call('ZADD', SCHEDULE, NOW + 1000, id) end
      note(id, cjson.encode({at = NOW, event = 'message-lost', reason = 'its message was on '
                             .. 'neither the queue nor a worker (lost in transit): sent again'}))
      result[#result + 1] = id
    end
  end
end
redis.call('DEL', MISSING)
for start = 1, #still_missing, 500 do  -- a bounded number of arguments a command
  local fields = {}
  for i = start, math.min(start + 499, #still_missing) do
    fields[#fields + 1] = still_missing[i][1]
    fields[#fields + 1] = still_missing[i][2]
  end
  redis.call('HSET', MISSING, unpack(fields))
end
-- A sighting counts only from the round before: one left by a fleet stopped long ago does not.
if #still_missing > 0 then redis.call('PEXPIRE', MISSING, 60000) end
return result

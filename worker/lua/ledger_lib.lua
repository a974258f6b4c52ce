-- The ledger's shared part: prepended to every ledger script when it is loaded
-- (worker/scripts.py), so recording, claiming, settling and releasing stay one atomic step each.
--
-- Every ledger script takes the same first five arguments:
--   ARGV[1] key prefix (e.g. "cs:"), ARGV[2] now (ms), ARGV[3] retention of ended jobs (s),
--   ARGV[4] history entries kept per job, ARGV[5] messages kept on each broker list (the
--   window; 0: no limit)
-- Keys are built here from the prefix, the job ids and the entity keys the records hold (a
-- standalone Redis or Sentinel allows keys named by data; a Redis Cluster would need hash tags).
--
--   P..'job:'..id            hash  the job's record (worker/ledger.py documents its fields)
--   P..'job:'..id..':history' list newest first
--   P..'entity:'..E          list  the line of pending jobs of entity E, oldest first; only the
--                                  first (the head) may run, the others are 'held'
--   P..'entity:'..E..':last' hash  the newest delivery of E: d (job id), ds (its submission
--                                  number), at (ms); v, vj: the highest version delivered, and by
--                                  which job
--   P..'message:'..Q..':'..PRI hash  list (kombu's Redis list) and text (the Celery message with
--                                  @@job@@ for the id, @@pushed@@ in its delivery tag for when) of queue Q at priority PRI
--   P..'dispatched:'..Q      zset  queued jobs of queue Q whose message is on the broker (its
--                                  list, or with a worker: the unacked index), by when
--                                  it was pushed: what reconcile.lua checks
--   P..'ready:'..Q..':'..PRI zset  queued jobs waiting for room on the broker list (more than
--                                  the window), by when they were queued: fed in as messages
--                                  are taken
--   P..'missing:'..Q         hash  queued jobs of queue Q whose message the last reconcile round
--                                  found on neither a list nor a worker -> when first found so
--                                  (reconcile.lua sends one again when a later round agrees)
--   P..'running'             zset  job id -> when its runner's lease ends (ms). The runner is
--                                  the job hash's 'lock' field (its token): a claim holds while
--                                  the field is set and the lease has not ended (claim_left)
--   P..'handed-back'         string jobs handed back to their queue at a full gate, in all
--   P..'counts'              hash  jobs per state, except running (the size of P..'running'
--                                  says that); P..'batch:'..B the same for one batch

local P, NOW = ARGV[1], tonumber(ARGV[2])
local RETENTION_S, HISTORY_LEN, WINDOW = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local COUNTS, SCHEDULE, RUNNING = P .. 'counts', P .. 'schedule', P .. 'running'
-- States a job ends in (review too: a person decides), as a batch counts them.
local ENDED = {delivered = true, merged = true, superseded = true, review = true,
               rejected = true}

local function job_key(id) return P .. 'job:' .. id end
local function history_key(id) return P .. 'job:' .. id .. ':history' end
local function line_key(entity) return P .. 'entity:' .. entity end

-- How long the claim on job `id` still holds (ms; 0: none), given its hash's 'lock' field: a
-- worker's token, good while its lease (the job's score in RUNNING) lasts. The lock lives in the
-- job hash, which every script that checks it reads anyway, and its lease in RUNNING, which
-- reap.lua sweeps: no key of its own to set, read and delete per job.
local function claim_left(id, lock)
  if not lock or lock == '' then return 0 end
  local lease = tonumber(redis.call('ZSCORE', RUNNING, id) or '0')
  return math.max(0, lease - NOW)
end

-- Move one job's count from state `from` (nil: a new job) to `to`, in the ledger and its batch.
-- Running jobs are not counted here: every one is in RUNNING (claim.lua adds it, whatever ends
-- its run removes it), whose size is their count; that spares a claim and a settle a command
-- each.
local function recount(from, to, batch)
  if from and from ~= 'running' then redis.call('HINCRBY', COUNTS, from, -1) end
  if to ~= 'running' then redis.call('HINCRBY', COUNTS, to, 1) end
  if batch and batch ~= '' then
    local counts = P .. 'batch:' .. batch
    if from and ENDED[from] then redis.call('HINCRBY', counts, from, -1) end
    if ENDED[to] then redis.call('HINCRBY', counts, to, 1) end
  end
end

local function note(id, entry)
  redis.call('LPUSH', history_key(id), entry)
  redis.call('LTRIM', history_key(id), 0, HISTORY_LEN - 1)
end

local function queue_of(kind) return string.match(kind, '^[^.]+') end
local function dispatched_key(queue) return P .. 'dispatched:' .. queue end
local function ready_key(queue, priority) return P .. 'ready:' .. queue .. ':' .. priority end

-- The stored message template of a queue and priority ({list, text}, either may be false), and
-- a broker list's length, each read once per script: a backfill's chunk queues a thousand jobs
-- to the same list in one call.
local TEMPLATES, LENGTHS = {}, {}
local function template_of(queue, priority)
  local name = queue .. ':' .. priority
  local template = TEMPLATES[name]
  if not template then
    template = redis.call('HMGET', P .. 'message:' .. name, 'list', 'text')
    TEMPLATES[name] = template
  end
  return template
end
local function list_length(list)
  local n = LENGTHS[list]
  if not n then
    n = redis.call('LLEN', list)
    LENGTHS[list] = n
  end
  return n
end

-- Push a job's Celery message: the template stored for its queue and priority, filled with its
-- id (an id is hex digits: nothing in it is special to gsub) and, in its delivery tag, when
-- (worker/dispatch.py), and note it as dispatched.
-- Returns false if no template is stored (a worker stores them when it starts).
local function push(id, queue, priority)
  local template = template_of(queue, priority)
  if not (template[1] and template[2]) then return false end
  local message = string.gsub(template[2], '@@(%l+)@@', {job = id, pushed = tostring(NOW)})
  LENGTHS[template[1]] = redis.call('LPUSH', template[1], message)
  redis.call('ZADD', dispatched_key(queue), NOW, id)
  return true
end

-- Queue a job: its message goes on the broker list while the list holds fewer than WINDOW
-- messages; beyond that it waits in the ready set, without a message (no 1.3 kB copy of what
-- the ledger knows), and is fed in by the rounds and as workers take messages (top_up,
-- top_up_after_take). Without a stored template the job waits on the schedule for a second.
local function dispatch(id, kind, priority)
  local queue = queue_of(kind)
  local list = template_of(queue, priority)[1]
  if list and WINDOW > 0 and list_length(list) >= WINDOW then
    redis.call('ZADD', ready_key(queue, priority), NOW, id)
  elseif not push(id, queue, priority) then
    redis.call('ZADD', SCHEDULE, NOW + 1000, id)
  end
end

-- Feed ready jobs of `queue` at `priority` onto its broker list while it holds fewer than
-- `below` messages (at most `most` of them). A ready job that is no longer queued is dropped
-- from the set. Returns how many were fed.
local function feed_list(queue, priority, most, below)
  local ready = ready_key(queue, priority)
  local list = template_of(queue, priority)[1]
  local moved = 0
  while list and moved < most and list_length(list) < below do
    local next = redis.call('ZPOPMIN', ready)[1]
    if not next then break end
    if redis.call('HGET', job_key(next), 'state') == 'queued' then
      push(next, queue, priority)
      moved = moved + 1
    end
  end
  return moved
end

-- Feed ready jobs of `queue` onto its broker lists while they have room (at most `most`
-- messages; realtime first): the republisher's rounds (feed.lua, reconcile.lua).
local function top_up(queue, most)
  -- Most rounds find nothing waiting: one command says so.
  if redis.call('EXISTS', ready_key(queue, 'realtime'), ready_key(queue, 'bulk')) == 0 then
    return 0
  end
  local moved = feed_list(queue, 'realtime', most, WINDOW)
  return moved + feed_list(queue, 'bulk', most - moved, WINDOW)
end

-- A worker took a message of `queue` at `priority` (claim.lua): feed that list only once it
-- runs low, down to half the window. Every worker's republisher tops the lists up twice a
-- second (feed.lua), so a claim rarely has to: a claim in a backlog costs four commands, not
-- ten.
local function top_up_after_take(queue, priority, most)
  if WINDOW <= 0 or redis.call('EXISTS', ready_key(queue, priority)) == 0 then return 0 end
  local list = template_of(queue, priority)[1]
  if not list or list_length(list) > WINDOW / 2 then return 0 end
  return feed_list(queue, priority, most, WINDOW)
end

-- The head of an entity's line may run: if it was held, it is queued now (its message pushed).
-- `head`: the line's head if the caller knows it (false: the line is empty), nil: read here.
local function release_head(entity, head)
  if head == nil then head = redis.call('LINDEX', line_key(entity), 0) end
  if not head then return nil end
  local key = job_key(head)
  local job = redis.call('HMGET', key, 'state', 'kind', 'priority', 'batch')
  if job[1] ~= 'held' then return nil end
  redis.call('HSET', key, 'state', 'queued', 'updated_at_ms', NOW)
  recount('held', 'queued', job[4])
  dispatch(head, job[2], job[3])
  return head
end

-- A job leaves its entity's line (it ended, or went to review); if it was the head, the next
-- job is released at once.
local function leave_line(id, entity)
  if not entity or entity == '' then return end
  local line = line_key(entity)
  -- The job that ends is the head, nearly always, and nearly always alone in its line: the
  -- first two say both in one command (the second, if any, goes back: it is the new head).
  local first = redis.call('LPOP', line, 2)
  if not first then return end
  local head, next = first[1], first[2] or false
  if next then redis.call('LPUSH', line, next) end
  if head == id then
    release_head(entity, next)
  else  -- a held job discarded: the head stays, the job leaves from where it was
    redis.call('LPUSH', line, head)
    redis.call('LREM', line, 1, id)
  end
end

-- Join the end of an entity's line (a new job, or a requeued one): returns true if it is the
-- head (it may run now), false if it waits for the jobs before it.
local function join_line(id, entity)
  if not entity or entity == '' then return true end
  return redis.call('RPUSH', line_key(entity), id) == 1
end

-- A delivered job: remember it as the entity's newest delivery (by submission number; a job
-- that absorbed newer ones counts as the newest of them) and its version if it is the highest.
local function remember_delivery(id, job)
  local entity = job.entity
  if not entity or entity == '' then return end
  local last = line_key(entity) .. ':last'
  local seq = tonumber(job.top_seq or job.seq or '0')
  local newest = job.top_id or id
  local current = redis.call('HMGET', last, 'ds', 'v')
  if not current[1] or tonumber(current[1]) < seq then
    redis.call('HSET', last, 'd', newest, 'ds', seq, 'at', NOW)
  end
  if job.vkey and job.vkey ~= '' and (not current[2] or current[2] < job.vkey) then
    redis.call('HSET', last, 'v', job.vkey, 'vj', job.vjob or id)  -- whose version it was
  end
  redis.call('EXPIRE', last, RETENTION_S)
end

-- Cut an ended job down to what an operator asks of it later (no payload: personal data, no
-- envelope), so a million-row backfill leaves a couple of hundred bytes a job behind. `also`
-- names more fields to keep. Not even the success code of a delivered job: "delivered" says it
-- (and keeps the hash in a smaller size class). `known`: the job's fields as the caller read
-- (and updated) them, every kept one among them; nil: read here.
local KEPT = {'kind', 'client', 'attempts', 'faults', 'retries', 'submitted_at_ms'}
local function outline(id, state, also, known)
  local key = job_key(id)
  local names = {unpack(KEPT)}
  for _, name in ipairs(also) do names[#names + 1] = name end
  local values = {}
  if known then
    for i, name in ipairs(names) do values[i] = known[name] end
  else
    values = redis.call('HMGET', key, unpack(names))
  end
  local compact = {'state', state, 'updated_at_ms', NOW}
  for i = 1, #names do
    local value = values[i]
    if value and value ~= '' and value ~= '0' then
      compact[#compact + 1] = names[i]
      compact[#compact + 1] = value
    end
  end
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(compact))
  redis.call('EXPIRE', key, RETENTION_S)
end

-- Some fields of a job hash, as a table (absent fields are nil).
local function read(id, names)
  local values = redis.call('HMGET', job_key(id), unpack(names))
  local job = {}
  for i, name in ipairs(names) do job[name] = values[i] or nil end
  return job
end

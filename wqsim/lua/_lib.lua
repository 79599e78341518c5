-- _lib.lua: shared by every wqsim script (scripts.py prepends it).
--
-- Every script receives the same KEYS, built by wqsim.keys.Keys.script_keys():
--   KEYS[1] ready     LIST  entries waiting: a task id, or package_entry(<id>) for a work package
--   KEYS[2] inflight  ZSET  lease id -> lease deadline, epoch seconds (the reaper's index)
--   KEYS[3] delayed   ZSET  task id -> time its retry is due, epoch seconds
--   KEYS[4] dead      LIST  dead-letter task ids
--   KEYS[5] stats     HASH  counters: total, done, dead, retried, expired, retired, ...; the
--                           sequence 'leases' from which lease ids are drawn; and the
--                           sentinel 'created' = 1, written by every enqueue
--   KEYS[6] signal    LIST  at most one wake-up token for idle workers
--   KEYS[7] events    STREAM outcome records (one entry per settle call for 'done',
--                           one per task for retry/dead/expired/rejected/dropped)
-- and starts ARGV with
--   ARGV[1] key prefix "wqsim:{queue}:". Per-task and per-lease keys are built from it;
--           they share the {queue} hash tag, so they live in the same cluster slot
--           as KEYS (the approach BullMQ takes for per-job keys).
--   ARGV[2] progress channel, where terminal outcomes are published as
--           "<entry-id> <status> <id> [<id> ...]": the events entry that records them
--           comes first, so a listener can catch up from the stream and skip what it
--           has already counted (see listener.py).
--
-- A lease is one claim: id "<worker>#<n>" (or "<worker>#<n>@<package>" when the
-- claim took a work package). It is three things:
--   lease:<id>  STRING worker id, with a TTL (SET PX): alive while the key exists
--   held:<id>   SET    the task ids the claim still holds (no TTL)
--   inflight    ZSET   member <id>, score = deadline
-- A task's hash names its lease; the lease id is the fencing token.

local READY, INFLIGHT, DELAYED, DEAD, STATS, SIGNAL, EVENTS =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local PREFIX, PROGRESS = ARGV[1], ARGV[2]

-- Per-queue keys outside KEYS, built from PREFIX (they mirror wqsim.keys.Keys).
local LEDGER, DONE_INDEX, PRODUCERS = PREFIX .. 'ledger', PREFIX .. 'done', PREFIX .. 'producers'

local function task_key(id) return PREFIX .. 'task:' .. id end
local function lease_key(lease) return PREFIX .. 'lease:' .. lease end
local function held_key(lease) return PREFIX .. 'held:' .. lease end
local function package_key(pid) return PREFIX .. 'package:' .. pid end

-- A work package in the ready list: PACKAGE_ENTRY_PREFIX .. package id. The prefix comes
-- from wqsim.keys (scripts.py defines it ahead of this file), the one place it is spelled.
local function package_entry(pid) return PACKAGE_ENTRY_PREFIX .. pid end
-- The package id of a ready-list entry, or nil for a task id (an anchored pattern: a task
-- id fails at its first character, which matters when a claim takes many).
local PACKAGE_ENTRY_PATTERN = '^' .. string.gsub(PACKAGE_ENTRY_PREFIX, '%p', '%%%0') .. '(.+)$'
local function entry_package(entry) return string.match(entry, PACKAGE_ENTRY_PATTERN) end

-- A lease id "<worker>#<n>[@<package>]" as worker id, lease number (0 if none) and
-- package id (nil if none): the twin of wqsim.keys.parse_lease.
local function lease_parts(lease)
  local worker, number = string.match(lease, '^([^#]*)#(%d*)')
  return worker or '', tonumber(number) or 0, string.match(lease, '@(.+)$')
end

-- Wake one idle worker. The list never holds more than one token.
local function wake()
  if redis.call('EXISTS', SIGNAL) == 0 then redis.call('LPUSH', SIGNAL, '1') end
end

-- `started`: when the attempt's handler started (retry and dead outcomes), for timelines.
-- Redis's clock, epoch seconds with microseconds: the one clock every producer and
-- worker shares, used for the moments a task becomes ready (enqueue, release).
local function server_time()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end

-- The queue's retention policy (wqsim/retention.py), read once per script call from
-- <prefix>retention: a field that is absent takes the default below (mirrors
-- Retention's defaults), '' turns that bound off. Returns {keep_done, keep_done_s,
-- events_maxlen}, each a number or false.
local RETENTION_DEFAULTS = {keep_done = 10000, keep_done_s = false, events_maxlen = 100000}
local policy = nil
local function retention()
  if policy == nil then
    local r = redis.call('HMGET', PREFIX .. 'retention', 'keep_done', 'keep_done_s', 'events_maxlen')
    policy = {}
    for i, name in ipairs({'keep_done', 'keep_done_s', 'events_maxlen'}) do
      if r[i] == false then policy[name] = RETENTION_DEFAULTS[name] else policy[name] = tonumber(r[i]) or false end
    end
  end
  return policy
end

-- XADD to the events stream, trimmed to about the policy's events_maxlen (MAXLEN ~ trims
-- whole stream nodes only, so it costs next to nothing); returns the entry id.
local function append_event(...)
  local maxlen = retention().events_maxlen
  if maxlen then return redis.call('XADD', EVENTS, 'MAXLEN', '~', maxlen, '*', ...) end
  return redis.call('XADD', EVENTS, '*', ...)
end

-- Append one entry to the events stream; returns its id (which a progress message names).
local function record(id, event, attempt, worker, lease, at, detail, started)
  return append_event('event', event, 'id', id, 'attempt', attempt or 0,
    'worker', worker or '', 'lease', lease or '', 'at', at, 'detail', detail or '', 'started', started or '')
end

-- Whether the queue is drained, as a claim reply reports it:
--   1  every task the queue knows of is terminal, and no producer holds the queue open
--      (the producers set is empty: no more tasks are on their way);
--   0  not yet;
--  -1  the stats hash does not exist and nothing says the queue ever did (not created yet);
--  -2  the queue's record is gone: the stats hash is missing while its ledger exists, or it
--      exists without its 'created' sentinel (a counter increment recreated it after Redis
--      lost it: a restart without persistence, or an eviction). Never drained, then.
local function drain_state()
  local c = redis.call('HMGET', STATS, 'total', 'done', 'dead', 'cancelled', 'created')
  if not c[5] then
    if redis.call('EXISTS', STATS) == 1 or redis.call('EXISTS', LEDGER) == 1 then return -2 end
    return -1
  end
  local total = tonumber(c[1] or '0')
  if total > 0 and tonumber(c[2] or '0') + tonumber(c[3] or '0') + tonumber(c[4] or '0') >= total
      and redis.call('EXISTS', PRODUCERS) == 0 then return 1 end
  return 0
end

-- True once every task the queue knows of is in a terminal state.
local function drained()
  return drain_state() == 1
end

-- Graphs: a prerequisite `id` has just ended (done when `ok`, else dead or cancelled);
-- tell its dependents. Each dependent's count of unfinished prerequisites drops by
-- one, and a dependent whose count reaches zero joins the back of the ready list,
-- like any new task (first ready, first served). When a prerequisite failed,
-- a dependent without allow_failure is cancelled instead, and so are its own
-- dependents in turn, naming the ancestor that failed. A dependent is acted on
-- only while it is 'waiting', and a prerequisite ends only once (its completion
-- is fenced by its lease), so no dependent is queued twice, or never. The stats
-- counter 'waiting' drops by one for each dependent that leaves 'waiting'.
--
-- The release is stamped with Redis's own clock (server_time), not the caller's `now`:
-- a worker reads its clock before its request reaches Redis, so its `now` can be
-- older than the finish of a prerequisite another worker recorded in between.
local function resolve_dependents(id, ok)
  local now = server_time()
  local work, i, queued, left = {{id, ok}}, 1, false, 0
  while i <= #work do
    local from, succeeded = work[i][1], work[i][2]
    i = i + 1
    local dependents = redis.call('HGET', task_key(from), 'dependents')
    for dep in string.gmatch(dependents or '', '%S+') do
      local dkey = task_key(dep)
      local h = redis.call('HMGET', dkey, 'status', 'allow_failure')
      if h[1] == 'waiting' then
        if succeeded or h[2] == '1' then
          if redis.call('HINCRBY', dkey, 'pending', -1) <= 0 then
            redis.call('HSET', dkey, 'status', 'queued', 'enqueued_at', now)
            left = left + 1
            redis.call('LPUSH', READY, dep)
            queued = true
          end
        else
          local why = 'cancelled: prerequisite ' .. from .. ' did not succeed (failed ancestor ' .. id .. ')'
          left = left + 1
          redis.call('HSET', dkey, 'status', 'cancelled', 'cancelled_by', id, 'error', why, 'finished_at', now)
          redis.call('HINCRBY', STATS, 'cancelled', 1)
          local entry = record(dep, 'cancelled', 0, '', '', now, why)
          redis.call('PUBLISH', PROGRESS, entry .. ' cancelled ' .. dep)
          work[#work + 1] = {dep, false}
        end
      end
    end
  end
  if left > 0 then redis.call('HINCRBY', STATS, 'waiting', -left) end
  if queued then wake() end
end

local function bury(id, attempt, worker, lease, now, err, started)
  redis.call('HSET', task_key(id), 'status', 'dead', 'error', err, 'finished_at', now)
  redis.call('LPUSH', DEAD, id)
  redis.call('HINCRBY', STATS, 'dead', 1)
  local entry = record(id, 'dead', attempt, worker, lease, now, err, started)
  redis.call('PUBLISH', PROGRESS, entry .. ' dead ' .. id)
  resolve_dependents(id, false)
end

-- Move retries whose backoff has elapsed back to the front of the ready list.
local function promote_due(now)
  if redis.call('EXISTS', DELAYED) == 0 then return end
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', DELAYED, id)
    redis.call('HSET', task_key(id), 'status', 'queued')
    redis.call('RPUSH', READY, id)
  end
end

-- The results of a task's prerequisites, for its handler: {id, status, result JSON
-- or error, ...} ({} for a task without prerequisites: the common case costs nothing).
-- At most MAX_INPUTS + 1 of them (config.MAX_DEPENDENCIES_HANDED_OVER): a worker refuses
-- a task with more, and a hand-written list of millions must not hold the server that long.
local MAX_INPUTS = 100000
local function inputs(prereqs)
  local out = {}
  for p in string.gmatch(prereqs or '', '%S+') do
    if #out > 3 * MAX_INPUTS then break end
    local r = redis.call('HMGET', task_key(p), 'status', 'result', 'error')
    local ok = r[1] == 'done'
    out[#out + 1], out[#out + 2], out[#out + 3] = p, r[1] or 'missing', (ok and r[2] or r[3]) or ''
  end
  return out
end

-- A task id as wqsim.keys.ID allows: 1-128 letters, digits, '_', '.' or '-'. Ids are checked
-- at enqueue; one pushed by hand is checked here, so that no separator (a space, ':', '#',
-- '@') reaches a lease, the events stream or a progress message inside an id.
local function valid_id(id)
  return #id <= 128 and string.find(id, '^[%w_%.%-]+$') ~= nil
end

-- Take one task into `lease`, appending {id, kind, payload, attempt, inputs, time limit} to `out`
-- and its id to `taken`. Only a task whose status is 'queued' (or absent: a hash
-- written by hand, which is adopted) is taken; a stale duplicate id is dropped;
-- a missing hash, or an id outside the id alphabet, is dead-lettered. Two commands
-- per task on the hot path (plus one per prerequisite of a graph task, to hand over its results).
local function take(id, lease, worker, now, out, taken)
  local tkey = task_key(id)
  local h = redis.call('HMGET', tkey, 'status', 'kind', 'payload', 'attempt', 'prereqs', 'timeout_s')
  local status = h[1]
  if status == false then
    if redis.call('EXISTS', tkey) == 0 then
      redis.call('HSET', tkey, 'id', id, 'attempt', 0)
      redis.call('HINCRBY', STATS, 'total', 1)
      redis.call('HINCRBY', STATS, 'vanished', 1)  -- deleted, or evicted: reported (wqsim work, the audit)
      bury(id, 0, worker, '', now, 'task hash ' .. tkey .. ' does not exist')
      return
    end
    redis.call('HINCRBY', STATS, 'total', 1)  -- adopt it, so termination still adds up
    redis.call('HSETNX', tkey, 'id', id)
  elseif status ~= 'queued' then
    redis.call('HINCRBY', STATS, 'dropped', 1)
    record(id, 'dropped', h[4], worker, lease, now, 'id was in the ready list while its task was ' .. status)
    return
  end
  if not valid_id(id) then
    bury(id, tonumber(h[4]) or 0, worker, '', now,
      "refused: a task id must be 1-128 letters, digits, '_', '.' or '-' (this one was pushed by hand)")
    return
  end
  local prior = tonumber(h[4]) or 0  -- a hand-written count that is not a small whole number starts over
  if not (prior >= 0 and prior < 1e9 and prior % 1 == 0) then prior = 0 end
  local attempt = prior + 1
  -- Three fields only: the worker is the lease id's prefix, and every field written
  -- here costs time on the hot path (a listpack is scanned and shifted per field).
  redis.call('HSET', tkey, 'status', 'running', 'attempt', attempt, 'lease', lease)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5], out[n + 6] = id, h[2], h[3], attempt, inputs(h[5]), h[6] or ''
  taken[#taken + 1] = id
end

-- Claim up to `count` ready tasks (or one whole work package) for `worker`
-- under one lease of `lease_ms`: a new one, or `reuse`, a live lease of this
-- worker that settle.lua has just emptied (renewing it saves creating one).
-- Returns {drained (drain_state(), checked only when nothing was claimed; else 0; and -3 when
--          tasks are unfinished yet none is ready, claimed, scheduled or waiting: they are in
--          no structure, so nothing will ever finish them: their entries were lost),
--          next retry due (epoch s; only when nothing was claimed) or '', lease id or '',
--          backlog: entries left in the ready list, claims in flight (leases, all workers),
--          then id, kind, payload, attempt, inputs, time limit (s, or '') for each claimed task}.
-- The last two tell a worker whether claiming ahead could starve another worker.
local function claim(worker, now, lease_ms, count, reuse, settled)
  promote_due(now)
  local out = {0, '', '', 0, 0}
  local taken = {}
  local lease = nil
  if count > 0 then
    local entries = redis.call('RPOP', READY, count) or {}
    for i, entry in ipairs(entries) do
      local pid = entry_package(entry)
      if pid and not valid_id(pid) then pid = nil end  -- not a package wqsim made: take() refuses the entry
      if pid and (#taken > 0 or lease) then
        -- A package is claimed alone, under its own lease: put it and the rest back.
        for j = #entries, i, -1 do redis.call('RPUSH', READY, entries[j]) end
        break
      end
      if pid then
        lease = worker .. '#' .. redis.call('HINCRBY', STATS, 'leases', 1) .. '@' .. pid
        for _, id in ipairs(redis.call('LRANGE', package_key(pid), 0, -1)) do
          take(id, lease, worker, now, out, taken)
        end
        redis.call('DEL', package_key(pid))
        for j = #entries, i + 1, -1 do redis.call('RPUSH', READY, entries[j]) end
        break
      end
      lease = lease or reuse or (worker .. '#' .. redis.call('HINCRBY', STATS, 'leases', 1))
      take(entry, lease, worker, now, out, taken)
    end
  end
  if #taken > 0 then
    redis.call('SADD', held_key(lease), unpack(taken))
    -- A new lease is created; a reused one is renewed once less than half of it is left
    -- (heartbeats renew it too), which spares two writes per task under load.
    if lease ~= reuse or redis.call('PTTL', lease_key(lease)) < tonumber(lease_ms) / 2 then
      redis.call('SET', lease_key(lease), worker, 'PX', lease_ms)
      redis.call('ZADD', INFLIGHT, tonumber(now) + tonumber(lease_ms) / 1000, lease)
    end
    out[3] = lease
  end
  if reuse and (#taken == 0 or lease ~= reuse) then
    redis.call('DEL', lease_key(reuse), held_key(reuse))
    redis.call('ZREM', INFLIGHT, reuse)
  end
  local backlog = redis.call('LLEN', READY)
  if backlog > 0 and redis.call('EXISTS', SIGNAL) == 0 then
    redis.call('LPUSH', SIGNAL, '1')  -- more work is ready: wake one idle worker
  end
  out[4], out[5] = backlog, redis.call('ZCARD', INFLIGHT)
  if #taken == 0 then
    out[1] = drain_state()
    if out[1] == 1 and settled then
      -- This call may have ended the last task: wake an idle worker, so that one that exits
      -- when the queue is drained sees it (and, leaving, wakes the next: see finish.lua).
      -- Only then: a claim that merely finds the queue drained wakes nobody, or idle
      -- workers that stay would wake each other for ever, one claim after another.
      wake()
    end
    local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
    if first[2] then out[2] = first[2] end  -- how long an idle worker may sleep
    if out[1] == 0 and backlog == 0 and out[5] == 0 and not first[2]
        and tonumber(redis.call('HGET', STATS, 'waiting') or '0') <= 0
        and redis.call('EXISTS', PRODUCERS) == 0 then  -- a producer still adding tasks: not lost
      out[1] = -3
    end
  end
  return out
end

-- settle.lua: record the outcomes of claimed tasks, then claim more (one round trip).
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] worker id
--   ARGV[4] now, epoch seconds
--   ARGV[5] lease length for newly claimed tasks, milliseconds
--   ARGV[6] how many tasks to claim after settling (0: claim none)
--   ARGV[7] retry backoff, seconds (the same for every retry in this call)
--   ARGV[8] number of outcomes n, followed by n groups of 6:
--           task id, lease id, outcome ('done'|'retry'|'dead'|'release'),
--           result JSON (done) or error text (retry/dead); 'release' hands back a
--           task that was never started (a stopping worker's reserve): it goes
--           back to the front of the ready list and its attempt is not counted,
--           started_at, finished_at (epoch seconds, measured by the worker)
-- An outcome is recorded only while its lease is alive (the lease key exists)
-- and still holds the task (it is a member of held:<lease>, removed as it is recorded). Otherwise it is
-- rejected: the lease expired and the reaper has returned, or will return, the
-- task; or the outcome was already recorded. So a task is never both finished
-- and returned, and never finished twice.
-- Done tasks are indexed in Keys.done_index and the oldest are retired by the queue's
-- retention policy (see retire() below and wqsim/retention.py).
-- Returns {rejected ids, drained (see drain_state()), next retry due or '', lease id or '',
--          then id, kind, payload, attempt, inputs, time limit for each newly claimed task}.
local worker, now, lease_ms, count = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local backoff = tonumber(ARGV[7])
local n = tonumber(ARGV[8])

-- Which outcomes does each lease still hold? One SMISMEMBER and one SREM per lease.
local by_lease, order = {}, {}
for i = 0, n - 1 do
  local lease = ARGV[10 + 6 * i]
  if not by_lease[lease] then
    by_lease[lease] = {}
    order[#order + 1] = lease
  end
  table.insert(by_lease[lease], 9 + 6 * i)
end
local accepted = {}
local reuse = nil  -- a live non-package lease left empty: the claim below may renew it
for _, lease in ipairs(order) do
  local bases = by_lease[lease]
  if redis.call('EXISTS', lease_key(lease)) == 1 then
    if #bases == 1 then  -- the common case under load: SREM both checks and removes
      accepted[bases[1]] = redis.call('SREM', held_key(lease), ARGV[bases[1]]) == 1
    else
      local ids = {}
      for k, base in ipairs(bases) do ids[k] = ARGV[base] end
      local held = redis.call('SMISMEMBER', held_key(lease), unpack(ids))
      local mine, seen = {}, {}
      for k, base in ipairs(bases) do
        if held[k] == 1 and not seen[ids[k]] then  -- a task listed twice in one call counts once
          seen[ids[k]] = true
          accepted[base] = true
          mine[#mine + 1] = ids[k]
        end
      end
      if #mine > 0 then redis.call('SREM', held_key(lease), unpack(mine)) end
    end
    if redis.call('SCARD', held_key(lease)) == 0 then
      if reuse == nil and count > 0 and not string.find(lease, '@', 1, true) then
        reuse = lease
      else
        redis.call('DEL', lease_key(lease), held_key(lease))
        redis.call('ZREM', INFLIGHT, lease)
      end
    end
  end
end

-- A worker's clock is corrected to Redis's (wqsim.clocks), to within half a round trip.
-- Causality is kept exactly: no attempt is recorded as finishing after Redis records it,
-- nor as starting after it finished.
-- One TIME call serves the whole settle (the retention policy's clock too, see retire()).
local recorded = n > 0 and server_time() or ''
local recorded_s = tonumber(recorded)
local function causal(started_at, finished_at)
  local s, f = tonumber(started_at), tonumber(finished_at)
  if f and f > recorded_s then finished_at, f = recorded, recorded_s end
  if s and f and s > f then started_at = finished_at end
  return started_at, finished_at
end

local rejected, done = {}, {}
local graphs = redis.call('HEXISTS', STATS, 'graphs') == 1  -- a queue without graphs skips resolve_dependents()
for i = 0, n - 1 do
  local base = 9 + 6 * i
  local id, lease, outcome, value = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local started_at, finished_at = causal(ARGV[base + 4], ARGV[base + 5])
  local tkey = task_key(id)
  if not accepted[base] then
    rejected[#rejected + 1] = id
    redis.call('HINCRBY', STATS, 'rejected', 1)
    record(id, 'rejected', 0, worker, lease, now, 'late ' .. outcome .. ': lease ' .. lease .. ' no longer holds it')
  elseif outcome == 'release' then
    redis.call('HINCRBY', tkey, 'attempt', -1)
    redis.call('HSET', tkey, 'status', 'queued')
    redis.call('RPUSH', READY, id)
    record(id, 'released', 0, worker, lease, now, 'not started; handed back')
  elseif outcome == 'done' then
    -- 'error' is left as it was: a task that failed before it succeeded keeps its last error.
    redis.call('HSET', tkey, 'status', 'done', 'result', value, 'started_at', started_at, 'finished_at', finished_at)
    done[#done + 1] = id
    if graphs then resolve_dependents(id, true) end
  else
    local h = redis.call('HMGET', tkey, 'attempt', 'max_attempts')
    local attempt, max_attempts = tonumber(h[1] or '1'), tonumber(h[2] or '1') or 1
    redis.call('HSET', tkey, 'started_at', started_at)
    if outcome == 'retry' and attempt < max_attempts then
      redis.call('HSET', tkey, 'status', 'scheduled', 'error', value, 'finished_at', finished_at)
      redis.call('ZADD', DELAYED, tonumber(now) + backoff, id)
      redis.call('HINCRBY', STATS, 'retried', 1)
      record(id, 'retry', attempt, worker, lease, finished_at, value, started_at)
    else
      bury(id, attempt, worker, lease, finished_at, value, started_at)
    end
  end
end
-- A done task's prerequisite result is still needed while one of its dependents has not
-- ended: a waiting one will read it when it is claimed (inputs()), so may a queued or a
-- scheduled one, and a running one may be retried.
local ENDED = {done = true, dead = true, cancelled = true}
local function still_needed(dependents)
  for dep in string.gmatch(dependents or '', '%S+') do
    local status = redis.call('HGET', task_key(dep), 'status')
    if status and not ENDED[status] then return true end
  end
  return false
end

-- The retention policy: index the tasks just recorded done, then retire the oldest beyond
-- keep_done and those older than keep_done_s (at most #ids + 100 per call, so no call runs
-- long; the rest go in later calls). A retired task's hash is deleted and counted in
-- 'retired' (stats and ledger), so the counters keep their totals. One that is still
-- needed moves to the back of the index, to be looked at again later. An index entry
-- whose hash is no longer a done task (lost) is dropped without being counted retired,
-- so the audit reports it.
local function retire(ids, at)  -- `at`: Redis's clock (one clock for every worker, whatever theirs say)
  local p = retention()
  if not p.keep_done and not p.keep_done_s then return end
  for first = 1, #ids, 1000 do  -- unpack() of a whole large package could overflow Lua's stack
    local scored = {}
    for i = first, math.min(first + 999, #ids) do scored[#scored + 1], scored[#scored + 2] = at, ids[i] end
    redis.call('ZADD', DONE_INDEX, unpack(scored))
  end
  local budget = #ids + 100
  local victims = {}
  if p.keep_done then
    local excess = redis.call('ZCARD', DONE_INDEX) - p.keep_done
    if excess > 0 then victims = redis.call('ZRANGE', DONE_INDEX, 0, math.min(excess, budget) - 1) end
  end
  if p.keep_done_s and #victims < budget then
    local old = redis.call('ZRANGEBYSCORE', DONE_INDEX, '-inf', '(' .. string.format('%.6f', tonumber(at) - p.keep_done_s),
      'LIMIT', #victims, budget - #victims)  -- past those already picked: the index is in score order
    for _, id in ipairs(old) do victims[#victims + 1] = id end
  end
  local attempts, seen, gone, keys = 0, {}, {}, {}
  for _, id in ipairs(victims) do
    if not seen[id] then
      seen[id] = true
      local tkey = task_key(id)
      local h = redis.call('HMGET', tkey, 'status', 'dependents', 'attempt')
      if h[1] ~= 'done' then
        redis.call('ZREM', DONE_INDEX, id)
      elseif h[2] and still_needed(h[2]) then
        redis.call('ZADD', DONE_INDEX, at, id)
      else
        gone[#gone + 1], keys[#keys + 1] = id, tkey
        attempts = attempts + (tonumber(h[3]) or 1)
      end
    end
  end
  for first = 1, #gone, 1000 do  -- one DEL and one ZREM per thousand
    local last = math.min(first + 999, #gone)
    redis.call('DEL', unpack(keys, first, last))
    redis.call('ZREM', DONE_INDEX, unpack(gone, first, last))
  end
  local retired = #gone
  if retired > 0 then
    local total = redis.call('HINCRBY', STATS, 'retired', retired)
    redis.call('HINCRBY', STATS, 'retired_attempts', attempts)
    redis.call('HINCRBY', LEDGER, 'retired', retired)
    -- Events go with the results they describe: those older than the oldest done task kept
    -- are trimmed (MINID ~: whole stream nodes only), so the stream's size follows the
    -- tasks kept, however many ids one 'done' entry lists. Once per 100 tasks retired:
    -- a stream node holds 100 entries, so trimming more often mostly removes nothing,
    -- and costs two commands per call when tasks are settled one at a time.
    if math.floor(total / 100) > math.floor((total - retired) / 100) then
      local oldest = redis.call('ZRANGE', DONE_INDEX, 0, 0, 'WITHSCORES')
      if oldest[2] then redis.call('XTRIM', EVENTS, 'MINID', '~', math.floor(tonumber(oldest[2]) * 1000)) end
    end
  end
end

if #done > 0 then
  local ids = table.concat(done, ' ')
  redis.call('HINCRBY', STATS, 'done', #done)
  local entry = append_event('event', 'done', 'id', ids, 'worker', worker, 'at', now)
  redis.call('PUBLISH', PROGRESS, entry .. ' done ' .. ids)
  retire(done, recorded)
end
local out = claim(worker, now, lease_ms, count, reuse, n > 0)
table.insert(out, 1, rejected)
return out

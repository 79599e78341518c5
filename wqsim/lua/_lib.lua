-- _lib.lua: shared by every wqsim script (scripts.py prepends it).
--
-- Every script receives the same KEYS, built by wqsim.keys.Keys.script_keys():
--   KEYS[1] ready     LIST  task ids waiting (LPUSH in, RPOP out)
--   KEYS[2] inflight  ZSET  task id -> lease deadline, epoch seconds
--   KEYS[3] delayed   ZSET  task id -> time a retry is due, epoch seconds
--   KEYS[4] dead      LIST  dead-letter task ids
--   KEYS[5] stats     HASH  counters (total, done, dead, retried, expired, ...)
--   KEYS[6] signal    LIST  at most one wake-up token for idle workers
--   KEYS[7] events    STREAM one entry per attempt outcome
-- and starts ARGV with
--   ARGV[1] key prefix "wqsim:{queue}:"; task and lease keys are built from it.
--           They share the {queue} hash tag, so they live in the same cluster
--           slot as KEYS (the approach BullMQ takes for per-job keys).
--   ARGV[2] progress channel, where terminal outcomes are published.

local READY, INFLIGHT, DELAYED, DEAD, STATS, SIGNAL, EVENTS =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local PREFIX, PROGRESS = ARGV[1], ARGV[2]

local function task_key(id) return PREFIX .. 'task:' .. id end
local function lease_key(id) return PREFIX .. 'lease:' .. id end

-- Wake one idle worker. The list never holds more than one token.
local function wake()
  redis.call('LPUSH', SIGNAL, '1')
  redis.call('LTRIM', SIGNAL, 0, 0)
end

local function record(id, event, attempt, worker, started_at, at, detail)
  redis.call('XADD', EVENTS, '*', 'id', id, 'event', event, 'attempt', attempt or 0,
    'worker', worker or '', 'started_at', started_at or '', 'at', at, 'detail', detail or '')
end

local function counter(name)
  return tonumber(redis.call('HGET', STATS, name) or '0')
end

-- True once every task the queue knows of is in a terminal state.
local function drained()
  local total = counter('total')
  return total > 0 and counter('done') + counter('dead') + counter('cancelled') >= total
end

local function bury(id, tkey, attempt, worker, started_at, now, err)
  redis.call('HSET', tkey, 'status', 'dead', 'error', err, 'finished_at', now)
  redis.call('LPUSH', DEAD, id)
  redis.call('HINCRBY', STATS, 'dead', 1)
  record(id, 'dead', attempt, worker, started_at, now, err)
  redis.call('PUBLISH', PROGRESS, 'dead ' .. id)
end

-- Move retries whose backoff has elapsed back to the front of the ready list.
local function promote_due(now)
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', DELAYED, id)
    redis.call('HSET', task_key(id), 'status', 'queued')
    redis.call('RPUSH', READY, id)
  end
end

-- Claim up to `count` tasks for `worker` under leases of `lease_ms`.
-- Returns {drained 0|1, next retry due (epoch s) or '', HGETALL of each claimed task...}.
-- Only tasks whose status is 'queued' (or absent: a hash written by hand) are
-- claimed; a stale duplicate id is dropped, a missing hash is dead-lettered.
local function claim(worker, now, lease_ms, count)
  promote_due(now)
  local out = {0, ''}
  local claimed = 0
  local deadline = tonumber(now) + tonumber(lease_ms) / 1000
  while claimed < count do
    local id = redis.call('RPOP', READY)
    if not id then break end
    local tkey = task_key(id)
    local status = redis.call('HGET', tkey, 'status')
    if redis.call('EXISTS', tkey) == 0 then
      -- A key in the queue without a task hash: record it so that it is counted.
      redis.call('HSET', tkey, 'id', id, 'attempt', 0)
      redis.call('HINCRBY', STATS, 'total', 1)
      bury(id, tkey, 0, worker, '', now, 'task hash ' .. tkey .. ' does not exist')
    elseif status == false or status == 'queued' then
      if status == false then
        -- Adopt a hash that wqsim did not enqueue, so termination still adds up.
        redis.call('HINCRBY', STATS, 'total', 1)
        redis.call('HSETNX', tkey, 'id', id)
      end
      local attempt = redis.call('HINCRBY', tkey, 'attempt', 1)
      redis.call('SET', lease_key(id), worker .. '#' .. attempt, 'PX', lease_ms)
      redis.call('ZADD', INFLIGHT, deadline, id)
      redis.call('HSET', tkey, 'status', 'running', 'worker', worker, 'started_at', now)
      claimed = claimed + 1
      out[#out + 1] = redis.call('HGETALL', tkey)
    else
      redis.call('HINCRBY', STATS, 'dropped', 1)
      record(id, 'dropped', redis.call('HGET', tkey, 'attempt'), worker, '', now,
        'id was in the ready list while its task was ' .. status)
    end
  end
  if redis.call('LLEN', READY) > 0 then wake() end
  if claimed == 0 and drained() then
    out[1] = 1
    wake()  -- so that the next idle worker also sees the queue drained
  end
  local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
  if first[2] then out[2] = first[2] end
  return out
end

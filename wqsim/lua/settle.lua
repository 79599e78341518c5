-- settle.lua: record the outcomes of claimed tasks, then claim more (one round trip).
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] worker id
--   ARGV[4] now, epoch seconds
--   ARGV[5] lease length for newly claimed tasks, milliseconds
--   ARGV[6] how many tasks to claim after settling (0: claim none)
--   ARGV[7] number of outcomes n, followed by n groups of 4:
--           task id, fencing token, outcome ('done'|'retry'|'dead'),
--           result JSON (done) or error text (retry/dead)
--   ARGV[8 + 4n] retry backoff, seconds (the same for every retry in this call)
-- An outcome is recorded only while the caller still holds the lease
-- (GET lease == token). Otherwise it is rejected: the lease expired, and the
-- reaper has returned or will return the task, so recording it here would let
-- one task be both finished and returned.
-- Returns {rejected ids, drained 0|1, next retry due or '', HGETALL of each claimed task...}.
local worker, now, lease_ms, count = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local backoff = tonumber(ARGV[8 + 4 * n])
local rejected = {}
for i = 0, n - 1 do
  local base = 8 + 4 * i
  local id, token, outcome, value = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local lkey = lease_key(id)
  local tkey = task_key(id)
  if redis.call('GET', lkey) ~= token then
    rejected[#rejected + 1] = id
    redis.call('HINCRBY', STATS, 'rejected', 1)
    record(id, 'rejected', string.match(token, '#(%d+)$'), worker, '', now,
      'late ' .. outcome .. ': lease ' .. token .. ' no longer held')
  else
    redis.call('DEL', lkey)
    redis.call('ZREM', INFLIGHT, id)
    local attempt = tonumber(redis.call('HGET', tkey, 'attempt'))
    local started_at = redis.call('HGET', tkey, 'started_at')
    local max_attempts = tonumber(redis.call('HGET', tkey, 'max_attempts') or '1') or 1
    if outcome == 'done' then
      redis.call('HSET', tkey, 'status', 'done', 'result', value, 'finished_at', now)
      redis.call('HDEL', tkey, 'error')
      redis.call('HINCRBY', tkey, 'completions', 1)
      redis.call('HINCRBY', STATS, 'done', 1)
      record(id, 'done', attempt, worker, started_at, now, '')
      redis.call('PUBLISH', PROGRESS, 'done ' .. id)
    elseif outcome == 'retry' and attempt < max_attempts then
      redis.call('HSET', tkey, 'status', 'scheduled', 'error', value, 'finished_at', now)
      redis.call('ZADD', DELAYED, tonumber(now) + backoff, id)
      redis.call('HINCRBY', STATS, 'retried', 1)
      record(id, 'retry', attempt, worker, started_at, now, value)
    else
      bury(id, tkey, attempt, worker, started_at, now, value)
    end
  end
end
local out = claim(worker, now, lease_ms, count)
table.insert(out, 1, rejected)
return out

-- reap.lua: return tasks whose lease has expired to the ready list.
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] now, epoch seconds: candidates are inflight entries with deadline <= now
--   ARGV[4] how many candidates to examine at most
-- The lease key's TTL (Redis EXPIRE) is the authority: a candidate whose lease
-- key still exists is left alone, so a skewed clock can delay reaping but never
-- reap a live lease. Because settle.lua and this script both check the lease key
-- atomically, a task is either recorded by its worker or returned here, never both.
-- A task that has used all its attempts is dead-lettered instead.
-- Safe to run from several reapers at once: each candidate is handled once.
-- Returns {returned, buried}.
local now, limit = ARGV[3], tonumber(ARGV[4])
local returned, buried = 0, 0
local candidates = redis.call('ZRANGEBYSCORE', INFLIGHT, '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(candidates) do
  if redis.call('EXISTS', lease_key(id)) == 0 then
    redis.call('ZREM', INFLIGHT, id)
    local tkey = task_key(id)
    local h = redis.call('HMGET', tkey, 'attempt', 'max_attempts', 'worker', 'started_at')
    local attempt, max_attempts = tonumber(h[1] or '0'), tonumber(h[2] or '1') or 1
    local why = 'lease expired on worker ' .. (h[3] or '?') .. ' (attempt ' .. attempt .. ')'
    redis.call('HINCRBY', STATS, 'expired', 1)
    if attempt >= max_attempts then
      bury(id, tkey, attempt, h[3], h[4], now, why .. '; no attempts left')
      buried = buried + 1
    else
      redis.call('HSET', tkey, 'status', 'queued', 'error', why)
      redis.call('RPUSH', READY, id)
      record(id, 'expired', attempt, h[3], h[4], now, why)
      returned = returned + 1
    end
  end
end
if returned > 0 or drained() then wake() end
return {returned, buried}

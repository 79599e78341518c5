-- reap.lua: return the tasks of expired leases to the ready list.
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] now, epoch seconds: candidates are leases whose deadline <= now
--   ARGV[4] how many candidate leases to examine at most
-- The lease key's TTL (Redis EXPIRE) is the authority: a candidate whose key
-- still exists is left alone, so a skewed clock can delay reaping but never reap
-- a live lease. settle.lua checks the same key atomically, so each task is either
-- recorded by its worker or returned here, never both. A task that has used all
-- its attempts is dead-lettered instead. Tasks of a work package go back as a
-- package. Safe with several reapers at once: each lease is handled once.
-- Returns {tasks returned, tasks dead-lettered}.
local now, limit = ARGV[3], tonumber(ARGV[4])
local returned, buried = 0, 0
local candidates = redis.call('ZRANGEBYSCORE', INFLIGHT, '-inf', now, 'LIMIT', 0, limit)
for _, lease in ipairs(candidates) do
  if redis.call('EXISTS', lease_key(lease)) == 0 then
    redis.call('ZREM', INFLIGHT, lease)
    local worker, _, pid = lease_parts(lease)
    local back = {}
    for _, id in ipairs(redis.call('SMEMBERS', held_key(lease))) do
      local h = redis.call('HMGET', task_key(id), 'attempt', 'max_attempts')
      local attempt, max_attempts = tonumber(h[1] or '0'), tonumber(h[2] or '1') or 1
      local why = 'lease ' .. lease .. ' expired on worker ' .. worker .. ' (attempt ' .. attempt .. ')'
      redis.call('HINCRBY', STATS, 'expired', 1)
      if attempt >= max_attempts then
        bury(id, attempt, worker, lease, now, why .. '; no attempts left')
        buried = buried + 1
      else
        redis.call('HSET', task_key(id), 'status', 'queued', 'error', why)
        record(id, 'expired', attempt, worker, lease, now, why)
        back[#back + 1] = id
      end
    end
    redis.call('DEL', held_key(lease))
    if #back > 0 then
      table.sort(back, function(a, b) return (tonumber(a) or 0) < (tonumber(b) or 0) end)
      if pid then
        redis.call('RPUSH', package_key(pid), unpack(back))
        redis.call('RPUSH', READY, package_entry(pid))
      else
        for i = #back, 1, -1 do redis.call('RPUSH', READY, back[i]) end
      end
      returned = returned + #back
    end
  end
end
if returned > 0 or (buried > 0 and drained()) then wake() end  -- work to do, or the last task just ended
return {returned, buried}

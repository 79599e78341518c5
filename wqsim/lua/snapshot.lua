-- snapshot.lua: read, atomically, every structure a task can be in (for the audit).
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
-- Returns {queued ids, running ids, scheduled ids, dead ids}: queued ids are the
-- task ids in the ready list plus the members of each work package in it;
-- running ids are the members of every live claim (held:<lease> of each lease
-- in the inflight index). Nothing is written.
local queued, running = {}, {}
for _, entry in ipairs(redis.call('LRANGE', READY, 0, -1)) do
  local pid = string.match(entry, '^pkg:(.+)$')
  if pid then
    for _, id in ipairs(redis.call('LRANGE', package_key(pid), 0, -1)) do queued[#queued + 1] = id end
  else
    queued[#queued + 1] = entry
  end
end
for _, lease in ipairs(redis.call('ZRANGE', INFLIGHT, 0, -1)) do
  for _, id in ipairs(redis.call('SMEMBERS', held_key(lease))) do running[#running + 1] = id end
end
return {queued, running, redis.call('ZRANGE', DELAYED, 0, -1), redis.call('LRANGE', DEAD, 0, -1)}

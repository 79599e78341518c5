-- snapshot.lua: read, atomically, every structure a task can be in (for the audit).
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
-- Returns {queued ids, running ids, scheduled ids, dead ids, stats, last event id, ledger}:
-- queued ids are the task ids in the ready list plus the members of each work
-- package in it; running ids are the members of every live claim (held:<lease>
-- of each lease in the inflight index); stats is the stats hash as a flat
-- {field, value, ...} list (total, done, dead, cancelled, waiting, ...); the
-- last event id is the newest entry of the events stream ('' if none), so the
-- stream can be read up to this same instant; the ledger (Keys.ledger) is flat like
-- stats: what survives of the queue's record if the stats hash is lost. Nothing is written.
-- At this instant, total = done + dead + cancelled + waiting + queued + running
-- + scheduled, unless data vanished: every script moves a task between these
-- in one step.
local queued, running = {}, {}
for _, entry in ipairs(redis.call('LRANGE', READY, 0, -1)) do
  local pid = entry_package(entry)
  if pid then
    for _, id in ipairs(redis.call('LRANGE', package_key(pid), 0, -1)) do queued[#queued + 1] = id end
  else
    queued[#queued + 1] = entry
  end
end
for _, lease in ipairs(redis.call('ZRANGE', INFLIGHT, 0, -1)) do
  for _, id in ipairs(redis.call('SMEMBERS', held_key(lease))) do running[#running + 1] = id end
end
local last = redis.call('XREVRANGE', EVENTS, '+', '-', 'COUNT', 1)
return {queued, running, redis.call('ZRANGE', DELAYED, 0, -1), redis.call('LRANGE', DEAD, 0, -1),
  redis.call('HGETALL', STATS), last[1] and last[1][1] or '', redis.call('HGETALL', LEDGER)}

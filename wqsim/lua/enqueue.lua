-- enqueue.lua: write task hashes and queue them (optionally bundled into work packages).
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] now, epoch seconds (created_at and enqueued_at of every task)
--   ARGV[4] package size; 0 queues each task on its own
--   ARGV[5] number of tasks n, followed by n groups of 4:
--           task id, kind, payload JSON, max_attempts
-- One call writes a whole chunk; queue.py sends several chunks in one MULTI/EXEC,
-- so an enqueue is all-or-nothing and one round trip, and the server is never
-- blocked for long by a single script. Arguments are 4 per task instead of the
-- 16 of an HSET with a mapping: packing commands is the client's main cost.
-- Returns the package ids created (empty without packages).
local now, size, n = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local packages = {}
local members = {}
local function seal()
  local pid = tostring(redis.call('HINCRBY', STATS, 'packages', 1))
  redis.call('RPUSH', package_key(pid), unpack(members))
  for _, id in ipairs(members) do redis.call('HSET', task_key(id), 'package', pid) end
  redis.call('LPUSH', READY, 'pkg:' .. pid)
  packages[#packages + 1] = pid
  members = {}
end
for i = 0, n - 1 do
  local base = 6 + 4 * i
  local id = ARGV[base]
  redis.call('HSET', task_key(id), 'id', id, 'kind', ARGV[base + 1], 'payload', ARGV[base + 2],
    'max_attempts', ARGV[base + 3], 'status', 'queued', 'created_at', now, 'enqueued_at', now)
  if size > 0 then
    members[#members + 1] = id
    if #members == size then seal() end
  else
    redis.call('LPUSH', READY, id)
  end
end
if #members > 0 then seal() end
redis.call('HINCRBY', STATS, 'total', n)
wake()
return packages

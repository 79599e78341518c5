-- enqueue.lua: write task hashes and queue them (optionally bundled into work packages).
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] package size; 0 queues each task on its own
--   ARGV[4] 1 if this is one of several chunks of an enqueue, sent in one transaction; else 0
--   ARGV[5] c, how many ids to check, followed by those c ids: the first chunk of an
--           enqueue checks every id of the whole enqueue; the others pass 0
--   then    width w: 5 for plain tasks, 8 for a graph
--   then    number of tasks n, followed by n groups of w:
--           task id, kind, payload JSON, max_attempts,
--           time limit in seconds ('' for none: the kind's or the worker's limit applies)
--           [graph: prerequisite ids, dependent ids (each space-separated), allow_failure 0|1]
-- queue.py sends the chunks of one enqueue in one MULTI/EXEC, so an enqueue is
-- all-or-nothing and one round trip, and the server is never blocked for long by
-- a single script. An id that already exists would overwrite a task (losing it):
-- then nothing is written. An enqueue of one chunk just says so in its reply; in a
-- transaction of several, the first chunk notes the ids in the stats field
-- 'refused', every chunk writes nothing, and queue.py reads and deletes the field
-- in the same transaction.
-- Arguments are 5 per task instead of the 16 of an HSET with a mapping: packing
-- commands is the client's main cost.
-- A graph task with prerequisites is written 'waiting', with 'pending' = the number
-- of its prerequisites, and stays out of the ready list until settle.lua releases it;
-- the stats counter 'waiting' counts such tasks (for the audit's snapshot).
-- Every enqueue counts its tasks in the ledger too, and sets the stats sentinel 'created'
-- unless the queue's record was lost (only one of stats and ledger exists, or stats lacks it).
-- Returns {ids refused (space-separated; '' if none), then the package ids created}.
-- created_at and enqueued_at are Redis's clock when the script runs: the moment
-- the tasks became visible to workers, whatever the producer's own clock says.
local now = server_time()
-- A new queue has neither a stats hash nor a ledger; one that has only one of them lost
-- the other (see drain_state() in _lib.lua): then the sentinel is not written again.
local intact = redis.call('HEXISTS', STATS, 'created') == 1
  or (redis.call('EXISTS', STATS) == 0 and redis.call('EXISTS', LEDGER) == 0)
local size, chunked, c = tonumber(ARGV[3]), ARGV[4] == '1', tonumber(ARGV[5])
local width, n = tonumber(ARGV[6 + c]), tonumber(ARGV[7 + c])
local first = 8 + c
if c > 0 then
  local taken = {}
  for i = 6, 5 + c do
    if redis.call('EXISTS', task_key(ARGV[i])) == 1 then taken[#taken + 1] = ARGV[i] end
  end
  if #taken > 0 then
    if not chunked then return {table.concat(taken, ' ')} end
    redis.call('HSET', STATS, 'refused', table.concat(taken, ' '))
  end
end
if chunked and redis.call('HEXISTS', STATS, 'refused') == 1 then return {''} end

local packages = {''}
local members = {}
local waiting = 0
local function seal()
  local pid = tostring(redis.call('HINCRBY', STATS, 'packages', 1))
  redis.call('RPUSH', package_key(pid), unpack(members))
  for _, id in ipairs(members) do redis.call('HSET', task_key(id), 'package', pid) end
  redis.call('LPUSH', READY, package_entry(pid))
  packages[#packages + 1] = pid
  members = {}
end
for i = 0, n - 1 do
  local base = first + width * i
  local id = ARGV[base]
  local tkey = task_key(id)
  redis.call('HSET', tkey, 'id', id, 'kind', ARGV[base + 1], 'payload', ARGV[base + 2],
    'max_attempts', ARGV[base + 3], 'status', 'queued', 'created_at', now, 'enqueued_at', now)
  if ARGV[base + 4] ~= '' then redis.call('HSET', tkey, 'timeout_s', ARGV[base + 4]) end
  local pending = 0
  if width == 8 then
    local prereqs = ARGV[base + 5]
    for _ in string.gmatch(prereqs, '%S+') do pending = pending + 1 end
    redis.call('HSET', tkey, 'prereqs', prereqs, 'dependents', ARGV[base + 6],
      'allow_failure', ARGV[base + 7], 'pending', pending)
    if pending > 0 then redis.call('HSET', tkey, 'status', 'waiting') end
  end
  if pending > 0 then
    waiting = waiting + 1  -- waits outside the ready list
  elseif size > 0 then
    members[#members + 1] = id
    if #members == size then seal() end
  else
    redis.call('LPUSH', READY, id)
  end
end
if #members > 0 then seal() end
redis.call('HINCRBY', STATS, 'total', n)
-- The sentinel a stats hash recreated after a loss lacks, and the ledger that outlives the
-- stats hash if only that is lost: see drain_state() in _lib.lua and wqsim/storage.py.
if intact then redis.call('HSET', STATS, 'created', 1) end
redis.call('HINCRBY', LEDGER, 'enqueued', n)
if width == 8 then redis.call('HINCRBY', STATS, 'graphs', 1) end
if waiting > 0 then redis.call('HINCRBY', STATS, 'waiting', waiting) end
wake()
return packages

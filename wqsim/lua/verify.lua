-- verify.lua: re-check, atomically, the tasks the audit suspects were lost.
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3..] suspect task ids
-- The audit's snapshot and its scan of the task hashes are read at different
-- instants, so a task that moved in between looks out of place. Here each
-- suspect is checked against its own status at one instant: it is lost only if
--   its hash is missing, and it cannot have been retired: no done task was ever
--   retired, or it is still in the done index (a retired task leaves the index with
--   its hash; one that was retired cannot be told by id from one that vanished, so
--   the audit counts those by the shortfall of hashes against total - retired); or
--   queued (or no status: an adoptable hand-written hash): neither in the
--     ready list nor in the package (named by its 'package' field) the ready
--     list holds; or
--   running: not held by the lease its 'lease' field names, or that lease is
--     not in the inflight index (nothing would ever reap it); or
--   scheduled: not in the delayed set; dead: not in the dead-letter list; or
--   waiting: every prerequisite is terminal (or it has none), so nothing will
--     ever release or cancel it; or
--   its status is none of the known ones.
-- Done and cancelled tasks are never lost. Nothing is written.
-- Returns the ids of the suspects found lost, in the order given.
local ready = nil  -- the ready list's entries as a set, read once and only if needed
local function in_ready(entry)
  if ready == nil then
    ready = {}
    for _, e in ipairs(redis.call('LRANGE', READY, 0, -1)) do ready[e] = true end
  end
  return ready[entry] == true
end
local TERMINAL = {done = true, dead = true, cancelled = true}
local may_be_retired = tonumber(redis.call('HGET', STATS, 'retired') or '0') > 0
  or tonumber(redis.call('HGET', LEDGER, 'retired') or '0') > 0

local function lost(id)
  local h = redis.call('HMGET', task_key(id), 'status', 'lease', 'package', 'prereqs')
  local status, lease, pid = h[1], h[2], h[3]
  if status == false and redis.call('EXISTS', task_key(id)) == 0 then
    return not may_be_retired or redis.call('ZSCORE', DONE_INDEX, id) ~= false
  end
  if status == false or status == 'queued' then
    if in_ready(id) then return false end
    return not (pid and in_ready(package_entry(pid)) and redis.call('LPOS', package_key(pid), id) ~= false)
  elseif status == 'running' then
    return not (lease and redis.call('SISMEMBER', held_key(lease), id) == 1
      and redis.call('ZSCORE', INFLIGHT, lease) ~= false)
  elseif status == 'scheduled' then
    return redis.call('ZSCORE', DELAYED, id) == false
  elseif status == 'dead' then
    return redis.call('LPOS', DEAD, id) == false
  elseif status == 'waiting' then
    for p in string.gmatch(h[4] or '', '%S+') do
      if not TERMINAL[redis.call('HGET', task_key(p), 'status')] then return false end
    end
    return true
  end
  return not TERMINAL[status]
end

local out = {}
for i = 3, #ARGV do
  if lost(ARGV[i]) then out[#out + 1] = ARGV[i] end
end
return out

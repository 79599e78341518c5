-- heartbeat.lua: renew a worker's leases that are still alive ("pings").
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] now, epoch seconds
--   ARGV[4] new lease length, milliseconds
--   ARGV[5] worker id, or '' to renew only the leases listed
--   ARGV[6] the lease number this worker started after: its leases are numbered above
--           it, while an earlier worker of the same id (one that crashed and was
--           replaced) left only leases numbered at or below it, which must expire
--   ARGV[7..] lease ids the worker holds
-- A lease is renewed only while its key exists. Once Redis has expired it, it is
-- lost for good: its tasks belong to the reaper (and then to another worker),
-- and the caller must stop working on them; its results would be rejected.
-- With a worker id, the worker's other live leases are renewed too: claims it
-- made ahead, whose replies it has not read, so it cannot name them. They start
-- with an ordinary lease, so a worker that dies holding them loses them as soon.
-- Counts, in the stats hash, 'heartbeats' (+1 per call) and 'renewed' (+1 per lease
-- renewed): a worker's WorkerStats counts its heartbeats too, but only in its own
-- process; these outlive it. Nothing is counted while the stats hash is missing, so a
-- heartbeat never recreates a lost record (see drain_state in _lib.lua).
-- Returns the listed lease ids that were lost.
local now, lease_ms = tonumber(ARGV[3]), ARGV[4]
local worker, since = ARGV[5], tonumber(ARGV[6])
local function renew(lease)
  if redis.call('PEXPIRE', lease_key(lease), lease_ms) == 0 then return false end
  redis.call('ZADD', INFLIGHT, 'XX', now + tonumber(lease_ms) / 1000, lease)
  return true
end
local lost, listed, renewed = {}, {}, 0
for i = 7, #ARGV do
  listed[ARGV[i]] = true
  if renew(ARGV[i]) then renewed = renewed + 1 else lost[#lost + 1] = ARGV[i] end
end
if worker ~= '' then
  for _, lease in ipairs(redis.call('ZRANGE', INFLIGHT, 0, -1)) do
    local owner, number = lease_parts(lease)
    if not listed[lease] and owner == worker and number > since then
      if renew(lease) then renewed = renewed + 1 end
    end
  end
end
if redis.call('EXISTS', STATS) == 1 then
  redis.call('HINCRBY', STATS, 'heartbeats', 1)
  if renewed > 0 then redis.call('HINCRBY', STATS, 'renewed', renewed) end
end
return lost

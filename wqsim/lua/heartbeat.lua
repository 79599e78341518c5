-- heartbeat.lua: renew leases that are still alive ("pings").
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] now, epoch seconds
--   ARGV[4] new lease length, milliseconds
--   ARGV[5..] lease ids
-- A lease is renewed only while its key exists. Once Redis has expired it, it is
-- lost for good: its tasks belong to the reaper (and then to another worker),
-- and the caller must stop working on them; its results would be rejected.
-- Returns the lease ids that were lost.
local now, lease_ms = tonumber(ARGV[3]), ARGV[4]
local lost = {}
for i = 5, #ARGV do
  local lease = ARGV[i]
  if redis.call('PEXPIRE', lease_key(lease), lease_ms) == 1 then
    redis.call('ZADD', INFLIGHT, 'XX', now + tonumber(lease_ms) / 1000, lease)
  else
    lost[#lost + 1] = lease
  end
end
return lost

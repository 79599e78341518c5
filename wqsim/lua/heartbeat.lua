-- heartbeat.lua: renew leases that the caller still holds ("pings").
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] now, epoch seconds
--   ARGV[4] new lease length, milliseconds
--   ARGV[5..] pairs of task id, fencing token
-- A lease is renewed only if its key still holds the caller's token; otherwise
-- the caller has lost it (expired, possibly reaped and claimed by another worker).
-- Returns the ids whose lease was lost.
local now, lease_ms = tonumber(ARGV[3]), ARGV[4]
local lost = {}
for i = 5, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if redis.call('GET', lease_key(id)) == token then
    redis.call('PEXPIRE', lease_key(id), lease_ms)
    redis.call('ZADD', INFLIGHT, 'XX', now + tonumber(lease_ms) / 1000, id)
  else
    lost[#lost + 1] = id
  end
end
return lost

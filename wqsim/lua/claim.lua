-- claim.lua: take up to ARGV[6] ready tasks (or one work package) under one lease.
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] worker id
--   ARGV[4] now, epoch seconds: the caller's clock, or '' for Redis's (a claim sent
--           ahead of time, see Queue.wait_then_claim)
--   ARGV[5] lease length, milliseconds (PX of the lease key)
--   ARGV[6] how many tasks to claim at most
-- Returns what claim() in _lib.lua returns.
local now = ARGV[4] ~= '' and ARGV[4] or server_time()
return claim(ARGV[3], now, ARGV[5], tonumber(ARGV[6]), nil)

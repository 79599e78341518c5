-- claim.lua: take up to ARGV[6] ready tasks (or one work package) under one lease.
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] worker id
--   ARGV[4] now, epoch seconds (the caller's clock)
--   ARGV[5] lease length, milliseconds (PX of the lease key)
--   ARGV[6] how many tasks to claim at most
-- Returns {drained 0|1, next retry due or '', lease id or '',
--          then id, kind, payload, attempt for each claimed task}.
return claim(ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), nil)

-- finish.lua: a worker has finished (no more work can be had): record it, then announce it.
--   KEYS[1..7], ARGV[1..2]  as in _lib.lua
--   ARGV[3] worker id
--   ARGV[4] finished channel
-- The record goes to the stream <prefix>finishes (Keys.finishes), the durable twin of the
-- finished channel, and the message "<entry-id> <worker-id>" names it: a listener that was
-- disconnected reads the stream past the last entry it counted, and skips messages at or
-- before it. Both happen in this one call, so messages arrive in the stream's order.
-- A worker that leaves a drained queue wakes an idle one, so that a worker that exits when
-- the queue is drained learns it now, not at its next idle timeout (see claim() in _lib.lua).
-- Returns the entry id.
local worker, channel = ARGV[3], ARGV[4]
local FINISHES = PREFIX .. 'finishes'  -- mirrors Keys.finishes
local entry = redis.call('XADD', FINISHES, '*', 'worker', worker, 'at', server_time())
redis.call('PUBLISH', channel, entry .. ' ' .. worker)
if drained() then wake() end
return entry

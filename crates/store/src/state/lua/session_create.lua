-- Starts a session and ends the user's oldest beyond the cap, in one round trip.
-- KEYS[1] the new session's key, KEYS[2] the user's index (sorted set of session keys by
-- creation time); ARGV[1] the encoded session, ARGV[2] its idle lifetime (ms), ARGV[3] the
-- creation time (ms), ARGV[4] the cap, ARGV[5] the prefix of session keys, ARGV[6] the index's
-- lifetime (ms, the session max age).
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
-- Index entries whose session ended by itself (idle) are dropped first.
local members = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, k in ipairs(members) do
  if redis.call('EXISTS', k) == 0 then
    redis.call('ZREM', KEYS[2], k)
  end
end
local ended = 0
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  for _, k in ipairs(oldest) do
    redis.call('DEL', k)
    redis.call('ZREM', KEYS[2], k)
    ended = ended + 1
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return ended

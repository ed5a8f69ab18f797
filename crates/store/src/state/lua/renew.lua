-- Extends the leases of requests still in flight on this instance.
--
-- KEYS[i]    in-flight ZSET of lease i
-- ARGV[1]    lease, ms
-- ARGV[i+1]  member of lease i
--
-- Only leases still present are extended (ZADD XX): one that already ended stays ended.
-- Returns how many were extended.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local renewed = 0
for i, key in ipairs(KEYS) do
  renewed = renewed + redis.call('ZADD', key, 'XX', 'CH', now_ms + lease, ARGV[i + 1])
  local ttl = redis.call('PTTL', key)
  if ttl ~= -2 and ttl < lease then
    redis.call('PEXPIRE', key, lease)
  end
end
return renewed

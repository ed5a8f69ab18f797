-- Records one failed logon against the client address and the user name (or, in Redis
-- Cluster, against one of them: each subject's keys share a slot, the two subjects do not).
--
-- KEYS[1..n]     failures of each subject: ZSET of failure times (server ms) — the address,
--                then the user name
-- KEYS[n+1..2n]  ban of each subject: HASH {reason, until_ms} expiring with the ban
-- ARGV[1]  max_failures
-- ARGV[2]  find_time, ms
-- ARGV[3]  ban_time, ms
-- ARGV[4]  ban reason
-- ARGV[5]  a member unique to this call
--
-- A failure counts while it is younger than find_time. A key reaching max_failures is banned
-- for ban_time and its failures are cleared. Returns the subjects banned now (their indexes).
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_failures = tonumber(ARGV[1])
local find_time = tonumber(ARGV[2])
local ban_time = tonumber(ARGV[3])
local started = {}
local n = #KEYS / 2
for i = 1, n do
  local failures, ban = KEYS[i], KEYS[i + n]
  redis.call('ZREMRANGEBYSCORE', failures, '-inf', now_ms - find_time)
  redis.call('ZADD', failures, now_ms, ARGV[5])
  if redis.call('ZCARD', failures) >= max_failures then
    redis.call('DEL', failures, ban)
    redis.call('HSET', ban, 'reason', ARGV[4], 'until_ms', string.format('%.0f', now_ms + ban_time))
    redis.call('PEXPIRE', ban, ban_time)
    started[#started + 1] = i
  else
    redis.call('PEXPIRE', failures, find_time)
  end
end
return started

-- Phase 4 admission for one client, in one round trip.
--
-- KEYS[1]  in-flight leases: ZSET of "<instance>:<seq>" scored by lease expiry (server ms)
-- KEYS[2]  GCRA theoretical arrival time (server µs, a decimal string)
-- ARGV[1]  max_concurrent (0: no concurrency limit)
-- ARGV[2]  max_requests   (0: no rate limit)
-- ARGV[3]  rate interval, µs
-- ARGV[4]  lease, ms
-- ARGV[5]  this request's lease member
--
-- Returns {0, 0} admitted (lease taken when ARGV[1] > 0), {1, 0} refused by the concurrency
-- limit, {2, retry_after_µs} refused by the rate limit. A refusal changes nothing.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local max_concurrent = tonumber(ARGV[1])
local max_requests = tonumber(ARGV[2])

if max_concurrent > 0 then
  -- Leases of crashed instances end here.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
  if redis.call('ZCARD', KEYS[1]) >= max_concurrent then
    return {1, 0}
  end
end

if max_requests > 0 then
  local interval = tonumber(ARGV[3])
  local emission = interval / max_requests
  local tat = tonumber(redis.call('GET', KEYS[2]) or 0) or 0
  local next_tat = math.max(tat, now_us) + emission
  if next_tat - now_us > interval then
    return {2, math.ceil(next_tat - interval - now_us)}
  end
  -- The key lives until the client has fully recovered (tat <= now means no state).
  redis.call('SET', KEYS[2], string.format('%.3f', next_tat), 'PX', math.max(1, math.ceil((next_tat - now_us) / 1000)))
end

if max_concurrent > 0 then
  local lease = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[1], now_ms + lease, ARGV[5])
  if redis.call('PTTL', KEYS[1]) < lease then
    redis.call('PEXPIRE', KEYS[1], lease)
  end
end
return {0, 0}

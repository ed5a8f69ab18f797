-- Digest nonce counts (RFC 7616 §3.4.5): each nc may be used once per nonce. Parallel requests
-- on one nonce (a browser's several connections) arrive out of order, so the counts of the last
-- ARGV[3] below the highest seen are remembered, as a sorted set of nc by nc.
-- KEYS[1] the nonce's key; ARGV[1] nc; ARGV[2] the key's lifetime in ms; ARGV[3] the window.
-- Returns 1 (a new count, kept) or 0 (used before, or too far below the highest: a replay).
local nc = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
local top = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local highest = 0
if top[2] then highest = tonumber(top[2]) end
if nc <= highest - window then
  return 0
end
if redis.call('ZADD', KEYS[1], 'NX', nc, ARGV[1]) == 0 then
  return 0
end
if nc > highest then highest = nc end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. tostring(highest - window))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1

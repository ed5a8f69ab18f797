-- Digest nonce counts (RFC 7616 §3.4.5): accept nc only if it is above every nc seen with this
-- nonce. KEYS[1] the nonce's key; ARGV[1] nc; ARGV[2] the key's lifetime in ms (the nonce's).
-- Returns 1 (new count, stored) or 0 (a replay).
local seen = tonumber(redis.call('GET', KEYS[1]) or '0')
local nc = tonumber(ARGV[1])
if nc > seen then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0

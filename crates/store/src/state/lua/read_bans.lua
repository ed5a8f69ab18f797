-- Reads bans.
--
-- KEYS[i]  a ban key
--
-- Returns, for each key, {reason, ms left}: reason is nil and ms left negative when the key
-- holds no ban (PTTL's -2, or -1 for a key without expiry, which no ban of ours is).
local out = {}
for i, key in ipairs(KEYS) do
  local reason = redis.call('HGET', key, 'reason')
  out[i] = {reason, redis.call('PTTL', key)}
end
return out

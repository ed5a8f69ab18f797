-- wrk: a flood of wrong Basic passwords, each request from one of POOL client addresses
-- (X-Forwarded-For through a trusted proxy), each with a password never sent before.
local pool = tonumber(os.getenv("POOL") or "1000")
local n = 0
local b64chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
request = function()
  n = n + 1
  local client = n % pool
  local addr = string.format("10.%d.%d.%d", math.floor(client / 65536) % 256, math.floor(client / 256) % 256, client % 256)
  local creds = b64(string.format("user%d:guess-%d-%d", client, n, math.random(1, 1000000000)))
  return wrk.format("GET", "/private/x", { ["Authorization"] = "Basic " .. creds, ["X-Forwarded-For"] = addr })
end

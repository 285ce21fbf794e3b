-- A plugin version, the newest without one. KEYS: versions. ARGV: version or ''.
local v = ARGV[1]
if v == '' then v = tostring(redis.call('HLEN', KEYS[1])) end
local row = redis.call('HGET', KEYS[1], v)
if not row then return {} end
return {tonumber(v), row}

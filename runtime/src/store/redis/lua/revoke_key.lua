-- Revokes a live key of a tenant. KEYS: keys, revoked. ARGV: key id, tenant id.
local key = redis.call('HGET', KEYS[1], ARGV[1])
if not key or redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
if cjson.decode(key)['tenant_id'] ~= ARGV[2] then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
return 1

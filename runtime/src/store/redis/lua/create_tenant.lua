-- A tenant with its first key, unless it exists. KEYS: tenants, keys. ARGV: tenant id,
-- tenant JSON, key id, key JSON.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1

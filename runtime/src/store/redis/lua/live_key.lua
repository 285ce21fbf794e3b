-- A key that is not revoked. KEYS: keys, revoked. ARGV: key id.
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return false end
return redis.call('HGET', KEYS[1], ARGV[1])

-- Extends the lease of its owner. KEYS: row. ARGV: owner, lease until.
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'l', ARGV[2])
return 1

-- The next version of a plugin, unless these bytes already are one. Versions are numbered
-- 1, 2, … by this script alone, so concurrent uploads get neither gaps nor duplicates.
-- KEYS: versions (version -> row JSON without its number), digests (digest -> version).
-- ARGV: digest, row JSON. Returns {version, row JSON, 1 if new}.
local had = redis.call('HGET', KEYS[2], ARGV[1])
if had then return {tonumber(had), redis.call('HGET', KEYS[1], had), 0} end
local v = redis.call('HLEN', KEYS[1]) + 1
redis.call('HSET', KEYS[1], v, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], v)
return {v, ARGV[2], 1}

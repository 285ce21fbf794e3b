-- Removes a member from a state index if its score is at most the one the caller knows of.
-- KEYS: state index. ARGV: id, highest score to remove.
local had = redis.call('ZSCORE', KEYS[1], ARGV[1])
if had and tonumber(had) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0

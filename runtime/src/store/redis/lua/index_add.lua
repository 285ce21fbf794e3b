-- Indexes a transaction (one bucket's keys, one slot): its tenant, its creation time in the
-- tenant's list (if a list key is given), and its lease in the index of its state (if a
-- state key is given). A member's score in a state index only ever grows, so a removal
-- conditional on the score a remover saw (index_drop) never undoes a later writer's entry.
-- KEYS: tenants, [list], [state index]. ARGV: tenant, id, created, lease, list given (0/1),
-- state given (0/1). Returns the state index score ('' without a state key).
redis.call('SADD', KEYS[1], ARGV[1])
local i = 2
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[i], ARGV[3], ARGV[2])
  i = i + 1
end
if ARGV[6] ~= '1' then return '' end
local want = tonumber(ARGV[4])
local had = redis.call('ZSCORE', KEYS[i], ARGV[2])
if had and tonumber(had) >= want then want = tonumber(had) + 1 end
redis.call('ZADD', KEYS[i], want, ARGV[2])
return string.format('%d', want)

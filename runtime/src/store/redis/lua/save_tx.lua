-- The next revision of a transaction and its journal entry, if the stored revision is the one
-- the writer read. A change to a state that is not an end state is refused ({-2, old state})
-- unless the writer has indexed the new state first (index score given): the index must
-- always hold at least every transaction in that state.
-- KEYS: row, journal. ARGV: tenant, rev read, state, doc, owner, lease, updated,
-- events (JSON array), event count, ended (0/1), retention ms, index score ('' if none).
-- Returns {new rev, old state, old index score} or {-1} (conflict) or {-2, old state}.
local cur = redis.call('HMGET', KEYS[1], 't', 'r', 's', 'x')
if not cur[1] or cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return {-1} end
local x = cur[4] or ''
if cur[3] ~= ARGV[3] then
  if ARGV[10] == '0' and ARGV[12] == '' then return {-2, cur[3]} end
  x = ARGV[12]
end
if ARGV[10] == '1' then x = '' end
redis.call('HSET', KEYS[1], 's', ARGV[3], 'd', ARGV[4], 'o', ARGV[5], 'l', ARGV[6], 'u', ARGV[7],
  'e', ARGV[10], 'x', x)
local rev = redis.call('HINCRBY', KEYS[1], 'r', 1)
local n = tonumber(ARGV[9])
if n > 0 then
  local last = redis.call('HINCRBY', KEYS[1], 'q', n)
  redis.call('RPUSH', KEYS[2], '{"seq":' .. (last - n + 1) .. ',"at":' .. ARGV[7] .. ',"events":' .. ARGV[8] .. '}')
end
if ARGV[10] == '1' and tonumber(ARGV[11]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[11])
  redis.call('PEXPIRE', KEYS[2], ARGV[11])
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
return {rev, cur[3], cur[4] or ''}

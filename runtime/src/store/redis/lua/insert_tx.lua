-- A new transaction with its first journal entry, unless the id exists.
-- KEYS: row, journal. ARGV: tenant, kind, name, state, doc, owner, lease, created, updated,
-- events (JSON array), event count, ended (0/1), retention ms, index score ('' if none).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[11])
redis.call('HSET', KEYS[1], 't', ARGV[1], 'k', ARGV[2], 'n', ARGV[3], 's', ARGV[4], 'd', ARGV[5],
  'o', ARGV[6], 'l', ARGV[7], 'c', ARGV[8], 'u', ARGV[9], 'r', 0, 'q', n, 'e', ARGV[12], 'x', ARGV[14])
if n > 0 then
  redis.call('RPUSH', KEYS[2], '{"seq":1,"at":' .. ARGV[9] .. ',"events":' .. ARGV[10] .. '}')
end
if ARGV[12] == '1' and tonumber(ARGV[13]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[13])
  redis.call('PEXPIRE', KEYS[2], ARGV[13])
end
return 1

-- Takes over a transaction whose lease expired (or, with own, one this owner held), if it is
-- still of this kind and in one of the states. KEYS: row. ARGV: kind, owner, lease until,
-- now, own (0/1), states....
-- Returns {'gone'}, {'moved', state}, {'held', lease until} or {'claimed', row fields...}.
local r = redis.call('HMGET', KEYS[1], 'k', 's', 'l', 'o')
if not r[1] or r[1] ~= ARGV[1] then return {'gone'} end
local wanted = false
for i = 6, #ARGV do
  if ARGV[i] == r[2] then wanted = true end
end
if not wanted then return {'moved', r[2]} end
if not (tonumber(r[3]) < tonumber(ARGV[4]) or (ARGV[5] == '1' and r[4] == ARGV[2])) then
  return {'held', r[3]}
end
redis.call('HSET', KEYS[1], 'o', ARGV[2], 'l', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'r', 1)
local row = redis.call('HMGET', KEYS[1], 't', 'k', 'n', 's', 'd', 'r', 'o', 'l', 'c', 'u', 'e')
table.insert(row, 1, 'claimed')
return row

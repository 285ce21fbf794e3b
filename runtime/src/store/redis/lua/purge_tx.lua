-- Deletes an ended transaction (its row and journal) if it is still as the sweeper read it:
-- same revision, so a transaction resumed since (it left its end state) is kept.
-- KEYS: row, journal. ARGV: revision. Returns 1 if deleted, 0 if not.
if redis.call('HGET', KEYS[1], 'r') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1

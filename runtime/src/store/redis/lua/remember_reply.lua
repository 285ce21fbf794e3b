-- Remembers the first reply to an idempotency key, for the retention period, and keeps the
-- tenant's register of its replies (for Inspect) pruned. KEYS: reply, register.
-- ARGV: reply JSON, key, now, retention ms (0: keep).
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl)
  redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + ttl, ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[1], 'NX')
  redis.call('ZADD', KEYS[2], '+inf', ARGV[2])
end
return 1

-- Remembers the first reply to an idempotency key, for the retention period, and keeps the
-- tenant's register of its replies (key -> when it was remembered; for the sweeper's
-- purge_replies) pruned of what has expired. KEYS: reply, register.
-- ARGV: reply JSON, key, now, retention ms (0: keep).
local ttl = tonumber(ARGV[4])
local now = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - ttl))
else
  redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
redis.call('ZADD', KEYS[2], 'NX', now, ARGV[2])
return 1

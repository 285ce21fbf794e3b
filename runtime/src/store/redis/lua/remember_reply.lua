-- Remembers the first reply to an idempotency key, for the retention period, and keeps the
-- tenant's register of its replies (key -> when it was remembered; for the sweeper's
-- purge_replies) pruned of what has expired. KEYS: reply, register.
-- ARGV: reply JSON, key, now, retention ms (0: keep). Returns 1 if this reply was stored, 0 if
-- one was stored before.
local ttl = tonumber(ARGV[4])
local now = tonumber(ARGV[3])
local stored
if ttl > 0 then
  stored = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - ttl))
else
  stored = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
redis.call('ZADD', KEYS[2], 'NX', now, ARGV[2])
if stored then return 1 end
return 0

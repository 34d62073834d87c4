-- ContextRecorder.record (recstack/exploration/rewards.py): HSET the request's contexts (ARGV[2..])
-- and EXPIRE it (ARGV[1]) atomically; one key, KEYS[1] = Keys.bandit_contexts(request_id).
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])

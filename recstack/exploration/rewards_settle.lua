-- Contextual bandit rewards -> LinUCB statistics in Redis (recstack/exploration/rewards.py).
-- Zero rewards for the requests whose reward window closed.
local pkey = K.pending
local reqs = redis.call('ZRANGEBYSCORE', pkey, '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, req in ipairs(reqs) do
  local ckey = K.ctx .. req
  local flat = redis.call('HGETALL', ckey)
  local meta = meta_of(ckey)
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 'x:' then reward_arm(meta, string.sub(flat[i], 3), flat[i + 1], 0) end
  end
  redis.call('DEL', ckey)
  redis.call('ZREM', pkey, req)
end
return {#reqs, updates, resets}

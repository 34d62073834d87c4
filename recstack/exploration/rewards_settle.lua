-- Contextual bandit rewards -> LinUCB statistics in Redis (recstack/exploration/rewards.py).
-- Zero rewards for the requests whose reward window closed: ARGV[2] (JSON) lists them (read by the
-- caller, which declared their context keys and arms in KEYS); one no longer pending is skipped.
local pkey = key(K.pending)
local reqs = cjson.decode(ARGV[2])
local closed = 0
for _, req in ipairs(reqs) do
  if redis.call('ZSCORE', pkey, req) then
    local ckey = key(K.ctx .. req)
    local flat = redis.call('HGETALL', ckey)
    local meta = meta_of(ckey)
    for i = 1, #flat, 2 do
      if string.sub(flat[i], 1, 2) == 'x:' then reward_arm(meta, string.sub(flat[i], 3), flat[i + 1], 0) end
    end
    redis.call('DEL', ckey)
    redis.call('ZREM', pkey, req)
    closed = closed + 1
  end
end
return {closed, updates, resets}

-- Contextual bandit rewards -> LinUCB statistics in Redis (recstack/exploration/rewards.py).
-- One stream batch: impressions open reward windows, rewards update arms.
local window = tonumber(ARGV[2])
local batch = cjson.decode(ARGV[3])
local opened, failed = 0, {}
local function apply_one(ev)
  local ckey = key(K.ctx .. ev[2])
  if ev[1] == 'i' then
    if redis.call('EXISTS', ckey) == 0 then return end
    local served = {}
    for _, it in ipairs(ev[4]) do served['x:' .. it] = true end
    for _, f in ipairs(redis.call('HKEYS', ckey)) do
      if string.sub(f, 1, 2) == 'x:' and not served[f] then redis.call('HDEL', ckey, f) end
    end
    opened = opened + redis.call('ZADD', key(K.pending), 'NX', ev[3] + window, ev[2])
  else
    local xs = redis.call('HGET', ckey, 'x:' .. ev[3])
    if xs then
      redis.call('HDEL', ckey, 'x:' .. ev[3])
      reward_arm(meta_of(ckey), ev[3], xs, 1)
    end
  end
end
for i, ev in ipairs(batch) do
  local ok, err = pcall(apply_one, ev)
  if not ok then
    failed[#failed + 1] = type(err) == 'table' and tostring(err.err) or tostring(err)
  end
end
return {updates, resets, opened, failed}

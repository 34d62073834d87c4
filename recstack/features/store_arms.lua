-- FeatureStore.get_arms (recstack/features/store.py): alpha, beta of every arm hash in KEYS.
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'alpha', 'beta')
  out[2 * i - 1] = v[1] or false
  out[2 * i] = v[2] or false
end
return out

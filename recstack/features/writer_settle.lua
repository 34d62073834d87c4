-- Stream events -> features and Thompson arms in Redis (recstack/features/writer.py); keys as in
-- recstack/features/keys.py, behind the prefix ARGV[1].
-- FeatureWriter.settle: zero rewards of closed impression windows.
local prefix = ARGV[1]
local now = ARGV[2]
local limit = tonumber(ARGV[3])
local seg_ttl = tonumber(ARGV[4])
local pkey = prefix .. 'imp:pending'
local reqs = redis.call('ZRANGEBYSCORE', pkey, '-inf', now, 'LIMIT', 0, limit)
local zeros = 0
local function zero(akey)
  redis.call('HSETNX', akey, 'alpha', 1)
  redis.call('HSETNX', akey, 'beta', 1)
  redis.call('HINCRBYFLOAT', akey, 'beta', 1)
end
for _, req in ipairs(reqs) do
  local ikey = prefix .. 'imp:' .. req
  local flat = redis.call('HGETALL', ikey)
  local seg = redis.call('GET', ikey .. ':seg')
  for i = 1, #flat, 2 do
    if flat[i + 1] == '0' then
      zero(prefix .. 'bandit:ts:' .. flat[i])
      if seg then
        local skey = prefix .. 'bandit:tsseg:' .. seg .. '|' .. flat[i]
        zero(skey)
        if seg_ttl > 0 then redis.call('EXPIRE', skey, seg_ttl) end
      end
      zeros = zeros + 1
    end
  end
  redis.call('DEL', ikey, ikey .. ':exp', ikey .. ':seg')
  redis.call('ZREM', pkey, req)
end
return {#reqs, zeros}

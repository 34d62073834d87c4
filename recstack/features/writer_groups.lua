-- FeatureWriter.apply step 2 and settle (recstack/features/writer.py): effects on the tags of one
-- slot (item counters and Thompson arms, popularity, pending windows, experiment stats).
-- ARGV: groups (JSON) [{o = offsets key index or 0, e = [[index, src, offset, op, ...], ...]}],
-- popularity tau, rescale_at. Ops (keys are indexes into KEYS):
--   {'h', k, field}                     HINCRBY k field 1
--   {'a', k, field, ttl}                Thompson arm: Beta(1, 1) prior, field += 1, EXPIRE ttl (> 0)
--   {'z', marker, ttl, k, segk, segttl} settle: once per marker, beta += 1 on k (and segk if > 0)
--   {'p', k, epoch_k, item, w, ts}      popularity (time-decayed, see writer.py)
--   {'n', k, score, member}             ZADD NX
--   {'s', k, member}                    SADD
-- Returns JSON {failed = [[index, error]], zeros}.
local groups = cjson.decode(ARGV[1])
local tau = tonumber(ARGV[2])
local rescale_at = tonumber(ARGV[3])
local failed, zeros = {}, 0
local epoch = nil
local function popularity(pkey, ekey, item, w, ts)
  if tau <= 0 then
    redis.call('ZINCRBY', pkey, fmt17(w), item)
    return
  end
  if epoch == nil then
    epoch = tonumber(redis.call('GET', ekey))
    if epoch == nil then
      epoch = math.floor(ts)
      redis.call('SET', ekey, fmt17(epoch))
    end
  end
  local x = (ts - epoch) / tau
  if x > rescale_at then
    local new_epoch = math.floor(ts)
    local f = math.exp((epoch - new_epoch) / tau)
    local flat = redis.call('ZRANGE', pkey, 0, -1, 'WITHSCORES')
    for i = 1, #flat, 2 do redis.call('ZADD', pkey, fmt17(tonumber(flat[i + 1]) * f), flat[i]) end
    epoch = new_epoch
    redis.call('SET', ekey, fmt17(epoch))
    x = (ts - epoch) / tau
  end
  redis.call('ZINCRBY', pkey, fmt17(w * math.exp(x)), item)
end
local function arm(key, field, ttl)
  redis.call('HSETNX', key, 'alpha', 1)
  redis.call('HSETNX', key, 'beta', 1)
  redis.call('HINCRBYFLOAT', key, field, 1)
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end
local function apply_ops(ev)
  for i = 4, #ev do
    local op = ev[i]
    local kind = op[1]
    if kind == 'h' then
      redis.call('HINCRBY', KEYS[op[2]], op[3], 1)
    elseif kind == 'a' then
      arm(KEYS[op[2]], op[3], op[4])
    elseif kind == 'z' then
      if redis.call('SET', KEYS[op[2]], '1', 'NX', 'EX', op[3]) then
        arm(KEYS[op[4]], 'beta', 0)
        if op[5] > 0 then arm(KEYS[op[5]], 'beta', op[6]) end
        zeros = zeros + 1
      end
    elseif kind == 'p' then
      popularity(KEYS[op[2]], KEYS[op[3]], op[4], op[5], op[6])
    elseif kind == 'n' then
      redis.call('ZADD', KEYS[op[2]], 'NX', fmt(op[3]), op[4])
    elseif kind == 's' then
      redis.call('SADD', KEYS[op[2]], op[3])
    end
  end
end
for _, g in ipairs(groups) do
  local offs = offsets(g.o > 0 and KEYS[g.o] or nil)
  for _, ev in ipairs(g.e) do
    local src, off = ev[2], ev[3]
    if not offs.seen(src, off) then
      local ok, res = pcall(apply_ops, ev)
      if not ok then
        local msg = errmsg(res)
        local code = transient_code(msg)
        if code then
          offs.save()
          return redis.error_reply(code .. ' ' .. msg)
        end
        failed[#failed + 1] = {ev[1], msg}
      end
      offs.done(src, off)
    end
  end
  offs.save()
end
return cjson.encode({failed, zeros})

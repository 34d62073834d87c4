-- Stream events -> features and Thompson arms in Redis (recstack/features/writer.py); keys as in
-- recstack/features/keys.py, behind the prefix ARGV[1].
-- FeatureWriter.apply: one batch of events.
local prefix = ARGV[1]
local alpha = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local batch = cjson.decode(ARGV[6])
local tau = tonumber(ARGV[7])
local rescale_at = tonumber(ARGV[8])
local seg_ttl = tonumber(ARGV[9])
local consumed_cap = tonumber(ARGV[10])
local applied, dup, rewards = 0, 0, 0
local function fmt(x) return string.format('%.12g', x) end
local function fmt17(x) return string.format('%.17g', x) end
local pkey = prefix .. 'items:popularity'
local epoch = nil
local function popularity(item, w, ts)
  if tau <= 0 then
    redis.call('ZINCRBY', pkey, fmt17(w), item)
    return
  end
  if epoch == nil then
    epoch = tonumber(redis.call('GET', pkey .. ':epoch'))
    if epoch == nil then
      epoch = math.floor(ts)
      redis.call('SET', pkey .. ':epoch', fmt17(epoch))
    end
  end
  local x = (ts - epoch) / tau
  if x > rescale_at then
    local new_epoch = math.floor(ts)
    local f = math.exp((epoch - new_epoch) / tau)
    local flat = redis.call('ZRANGE', pkey, 0, -1, 'WITHSCORES')
    for i = 1, #flat, 2 do redis.call('ZADD', pkey, fmt17(tonumber(flat[i + 1]) * f), flat[i]) end
    epoch = new_epoch
    redis.call('SET', pkey .. ':epoch', fmt17(epoch))
    x = (ts - epoch) / tau
  end
  redis.call('ZINCRBY', pkey, fmt17(w * math.exp(x)), item)
end
local function arm_prior(key)
  redis.call('HSETNX', key, 'alpha', 1)
  redis.call('HSETNX', key, 'beta', 1)
end
local function bump_arms(ikey, item, field)
  local akey = prefix .. 'bandit:ts:' .. item
  arm_prior(akey)
  redis.call('HINCRBYFLOAT', akey, field, 1)
  local seg = redis.call('GET', ikey .. ':seg')
  if seg then
    local skey = prefix .. 'bandit:tsseg:' .. seg .. '|' .. item
    arm_prior(skey)
    redis.call('HINCRBYFLOAT', skey, field, 1)
    if seg_ttl > 0 then redis.call('EXPIRE', skey, seg_ttl) end
  end
end
local function apply_one(ev)
  local id, user, item, etype, ts = ev[1], ev[2], ev[3], ev[4], ev[5]
  local w, genres, req, reward, slate = ev[6], ev[7], ev[8], ev[9], ev[10]
  local exps, variants, interaction, seg = ev[11], ev[12], ev[13] == 1, ev[14]
  if redis.call('SET', prefix .. 'event:' .. id, '1', 'NX', 'EX', ttl) then
    local ukey = prefix .. 'user:' .. user .. ':stats'
    redis.call('HINCRBY', ukey, etype, 1)
    if interaction then redis.call('HINCRBY', ukey, 'total', 1) end
    local last = tonumber(redis.call('HGET', ukey, 'last_active') or '0')
    if ts > last then redis.call('HSET', ukey, 'last_active', fmt(ts)) end
    if etype == 'impression' then
      local ikey = prefix .. 'imp:' .. req
      for _, it in ipairs(slate) do
        redis.call('HINCRBY', prefix .. 'item:' .. it .. ':stats', 'impression', 1)
        if req ~= '' then redis.call('HSETNX', ikey, it, 0) end
      end
      if req ~= '' then
        local keep = math.floor(window) + 86400
        redis.call('EXPIRE', ikey, keep)
        redis.call('ZADD', prefix .. 'imp:pending', 'NX', fmt(ts + window), req)
        if seg ~= '' and not redis.call('SET', ikey .. ':seg', seg, 'NX', 'EX', keep) then
          redis.call('EXPIRE', ikey .. ':seg', keep)
        end
      end
      local meta = {}
      for n, exp in ipairs(exps) do
        local variant = variants[n]
        local ebase = prefix .. 'exp:' .. exp
        redis.call('SADD', ebase .. ':variants', variant)
        local skey = ebase .. ':' .. variant .. ':stats'
        redis.call('HINCRBY', skey, 'impressions', 1)
        local xkey = ebase .. ':user:' .. user
        if redis.call('HSETNX', xkey, 'variant', variant) == 1 then
          redis.call('HSET', xkey, 'first_exposure', fmt(ts))
          redis.call('HINCRBY', skey, 'users', 1)
        end
        redis.call('HINCRBY', xkey, 'impressions', 1)
        meta[#meta + 1] = exp .. '\n' .. variant
      end
      if req ~= '' and #meta > 0 then
        redis.call('SET', ikey .. ':exp', table.concat(meta, '\n'), 'EX', math.floor(window) + 86400)
      end
    elseif interaction then
      local rkey = prefix .. 'user:' .. user .. ':recent_items'
      redis.call('LREM', rkey, 0, item)
      redis.call('LPUSH', rkey, item)
      redis.call('LTRIM', rkey, 0, cap - 1)
      local ckey = prefix .. 'user:' .. user .. ':consumed'
      redis.call('ZADD', ckey, fmt17(ts), item)
      if redis.call('ZCARD', ckey) > consumed_cap then
        redis.call('ZREMRANGEBYRANK', ckey, 0, -(consumed_cap + 1))
      end
      local gkey = prefix .. 'user:' .. user .. ':genre_scores'
      local flat = redis.call('HGETALL', gkey)
      local scores = {}
      for i = 1, #flat, 2 do scores[flat[i]] = tonumber(flat[i + 1]) * (1 - alpha) end
      for _, g in ipairs(genres) do scores[g] = (scores[g] or 0) + alpha * w end
      local args = {}
      for g, s in pairs(scores) do
        args[#args + 1] = g
        args[#args + 1] = fmt(s)
      end
      if #args > 0 then redis.call('HSET', gkey, unpack(args)) end
      redis.call('HINCRBY', prefix .. 'item:' .. item .. ':stats', etype, 1)
      popularity(item, w, ts)
      if reward == 1 and req ~= '' then
        local ikey = prefix .. 'imp:' .. req
        local state = redis.call('HGET', ikey, item)
        if state ~= '1' then
          if state == '0' then redis.call('HSET', ikey, item, 1) end
          bump_arms(ikey, item, 'alpha')
          rewards = rewards + 1
        end
        local meta = redis.call('GET', ikey .. ':exp')
        if meta then
          local parts = {}
          for line in string.gmatch(meta, '[^\n]+') do parts[#parts + 1] = line end
          for n = 1, #parts - 1, 2 do
            local ebase = prefix .. 'exp:' .. parts[n]
            local skey = ebase .. ':' .. parts[n + 1] .. ':stats'
            redis.call('HINCRBY', skey, etype, 1)
            if redis.call('HINCRBY', ebase .. ':user:' .. user, etype, 1) == 1 then
              redis.call('HINCRBY', skey, 'users_' .. etype, 1)
            end
          end
        end
      end
    end
    return 'ok'
  end
  return 'dup'
end
local transient = {'OOM', 'READONLY', 'LOADING', 'BUSY', 'MASTERDOWN', 'TRYAGAIN', 'CLUSTERDOWN',
  'NOREPLICAS'}
local function transient_code(msg)
  for _, code in ipairs(transient) do
    if string.sub(msg, 1, #code + 1) == code .. ' ' or string.find(msg, '-' .. code .. ' ', 1, true) then
      return code
    end
  end
end
local failed = {}
local okey = prefix .. 'stream:offsets'
local stored, newest = {}, {}
local function seen_offset(src, off)
  if src == '' then return false end
  if stored[src] == nil then stored[src] = tonumber(redis.call('HGET', okey, src) or '-1') end
  return off <= stored[src]
end
for i, ev in ipairs(batch) do
  local src, off = ev[15], ev[16]
  local ok, res
  if seen_offset(src, off) then
    -- applied by an earlier call: a replay of any age is a no-op (whatever the event-id markers)
    ok, res = true, 'dup'
  else
    ok, res = pcall(apply_one, ev)
    if src ~= '' and (newest[src] == nil or off > newest[src]) then newest[src] = off end
  end
  if not ok then
    local msg = type(res) == 'table' and tostring(res.err) or tostring(res)
    local code = transient_code(msg)
    if code then
      -- Redis cannot write now (e.g. maxmemory): fail the whole call so the batch is retried; the
      -- events before this one are applied and their markers make the retry skip them
      return redis.error_reply(code .. ' ' .. msg)
    end
    failed[#failed + 1] = tostring(i)
    failed[#failed + 1] = msg
  elseif res == 'ok' then
    applied = applied + 1
  else
    dup = dup + 1
  end
end
for src, off in pairs(newest) do
  if off > stored[src] then redis.call('HSET', okey, src, off) end
end
return {applied, dup, rewards, failed}

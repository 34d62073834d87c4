-- FeatureWriter.apply, step 1 (recstack/features/writer.py): the events of the users of one slot.
-- ARGV: alpha, dedup ttl, recent cap, reward window, consumed cap, effects ttl, groups (JSON):
-- [{k = {stats, recent, consumed, genres, experiments, offsets, effects}, e = [event, ...]}, ...]
-- with every key an index into KEYS; event = [index, id, item, type, ts, weight, genres, request,
-- reward, slate, exps, variants, interaction, segment, src, offset, k_marker, k_imp, k_seg, k_exp].
-- Returns JSON {applied, dup, rewards, failed = [[index, error]], fx = [[index, effects]]}: one fx
-- row per applied event (the caller derives from the event itself what every applied event does to
-- item counters, popularity, pending windows and experiment impressions); its effects are those
-- that depend on this user's state: Thompson arm rewards (with the impression's segment), first
-- exposures, attributed A/B outcomes. They are stored with the event's offset (KEYS effects), so
-- that a replay of an event this group already applied returns them again.
local alpha = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local consumed_cap = tonumber(ARGV[5])
local fx_ttl = tonumber(ARGV[6])
local groups = cjson.decode(ARGV[7])
local applied, dup, rewards = 0, 0, 0
local failed, fxout = {}, {}
local function apply_one(K, ev, fx)
  local user_k, recent_k, consumed_k, genre_k, exp_k = K[1], K[2], K[3], K[4], K[5]
  local id, item, etype, ts = ev[2], ev[3], ev[4], ev[5]
  local w, genres, req, reward, slate = ev[6], ev[7], ev[8], ev[9], ev[10]
  local exps, variants, interaction, seg = ev[11], ev[12], ev[13] == 1, ev[14]
  local marker, ikey, segkey, metakey = KEYS[ev[17]], KEYS[ev[18]], KEYS[ev[19]], KEYS[ev[20]]
  if not redis.call('SET', marker, '1', 'NX', 'EX', ttl) then return 'dup' end
  local ukey = KEYS[user_k]
  redis.call('HINCRBY', ukey, etype, 1)
  if interaction then redis.call('HINCRBY', ukey, 'total', 1) end
  local last = tonumber(redis.call('HGET', ukey, 'last_active') or '0')
  if ts > last then redis.call('HSET', ukey, 'last_active', fmt(ts)) end
  local xkey = KEYS[exp_k]
  if etype == 'impression' then
    for _, it in ipairs(slate) do
      if req ~= '' then redis.call('HSETNX', ikey, it, 0) end
    end
    local keep = math.floor(window) + 86400
    if req ~= '' then
      redis.call('EXPIRE', ikey, keep)
      if seg ~= '' and not redis.call('SET', segkey, seg, 'NX', 'EX', keep) then
        redis.call('EXPIRE', segkey, keep)
      end
    end
    local meta = {}
    for n, exp in ipairs(exps) do
      local variant = variants[n]
      if redis.call('HSETNX', xkey, exp .. '\n' .. 'variant', variant) == 1 then
        redis.call('HSET', xkey, exp .. '\n' .. 'first_exposure', fmt(ts))
        fx[#fx + 1] = {'x', exp, variant, 'users'}
      end
      redis.call('HINCRBY', xkey, exp .. '\n' .. 'impressions', 1)
      meta[#meta + 1] = exp .. '\n' .. variant
    end
    if req ~= '' and #meta > 0 then
      redis.call('SET', metakey, table.concat(meta, '\n'), 'EX', keep)
    end
  elseif interaction then
    local rkey = KEYS[recent_k]
    redis.call('LREM', rkey, 0, item)
    redis.call('LPUSH', rkey, item)
    redis.call('LTRIM', rkey, 0, cap - 1)
    local ckey = KEYS[consumed_k]
    redis.call('ZADD', ckey, fmt17(ts), item)
    if redis.call('ZCARD', ckey) > consumed_cap then
      redis.call('ZREMRANGEBYRANK', ckey, 0, -(consumed_cap + 1))
    end
    local gkey = KEYS[genre_k]
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
    if reward == 1 and req ~= '' then
      local state = redis.call('HGET', ikey, item)
      if state ~= '1' then
        if state == '0' then redis.call('HSET', ikey, item, 1) end
        fx[#fx + 1] = {'a', item, 'alpha', redis.call('GET', segkey) or ''}
        rewards = rewards + 1
      end
      local meta = redis.call('GET', metakey)
      if meta then
        local parts = {}
        for line in string.gmatch(meta, '[^\n]+') do parts[#parts + 1] = line end
        for n = 1, #parts - 1, 2 do
          fx[#fx + 1] = {'x', parts[n], parts[n + 1], etype}
          if redis.call('HINCRBY', xkey, parts[n] .. '\n' .. etype, 1) == 1 then
            fx[#fx + 1] = {'x', parts[n], parts[n + 1], 'users_' .. etype}
          end
        end
      end
    end
  end
  return 'ok'
end
-- The effects of the applied events are stored per (call, partition) as one field
-- "src\tfirst\tlast" -> JSON [[offset, effects], ...] of KEYS effects: one HSET per user and call.
-- A field whose last offset is below this call's first offset of its partition is dropped: that
-- partition was applied in every tag up to there before this batch was read.
local function field_range(f)
  local src, lo, hi = string.match(f, '^(.*)\t(%-?%d+)\t(%-?%d+)$')
  if src then return src, tonumber(lo), tonumber(hi) end
end
for _, g in ipairs(groups) do
  local K = g.k
  local offs = offsets(KEYS[K[6]])
  local fkey = KEYS[K[7]]
  local first = {}
  for _, ev in ipairs(g.e) do
    local src, off = ev[15], ev[16]
    if src ~= '' and (first[src] == nil or off < first[src]) then first[src] = off end
  end
  if next(first) ~= nil then
    for _, f in ipairs(redis.call('HKEYS', fkey)) do
      local src, _, hi = field_range(f)
      if src and first[src] and hi < first[src] then redis.call('HDEL', fkey, f) end
    end
  end
  local stored = nil -- offset-indexed effects of earlier calls, read on the first replayed event
  local function stored_effects(src, off)
    if stored == nil then
      stored = {}
      local flat = redis.call('HGETALL', fkey)
      for i = 1, #flat, 2 do
        local fsrc = field_range(flat[i])
        if fsrc then
          for _, row in ipairs(cjson.decode(flat[i + 1])) do stored[fsrc .. '\t' .. string.format('%d', row[1])] = row[2] end
        end
      end
    end
    return stored[src .. '\t' .. string.format('%d', off)]
  end
  local records = {} -- src -> {lo, hi, rows}
  local function save_records()
    local wrote = false
    for src, r in pairs(records) do
      redis.call('HSET', fkey, string.format('%s\t%d\t%d', src, r.lo, r.hi), cjson.encode(r.rows))
      wrote = true
    end
    if wrote then redis.call('EXPIRE', fkey, fx_ttl) end
  end
  for _, ev in ipairs(g.e) do
    local src, off = ev[15], ev[16]
    if offs.seen(src, off) then
      -- applied by an earlier call: its effects again (the other tags skip what they applied);
      -- none stored: it was a duplicate event_id then
      dup = dup + 1
      local fx = stored_effects(src, off)
      if fx then fxout[#fxout + 1] = {ev[1], fx} end
    else
      local fx = {}
      local ok, res = pcall(apply_one, K, ev, fx)
      if not ok then
        local msg = errmsg(res)
        local code = transient_code(msg)
        if code then
          offs.save()
          save_records()
          return redis.error_reply(code .. ' ' .. msg)
        end
        failed[#failed + 1] = {ev[1], msg}
      elseif res == 'ok' then
        applied = applied + 1
        fxout[#fxout + 1] = {ev[1], fx}
        if src ~= '' then
          local r = records[src]
          if r == nil then
            r = {lo = off, hi = off, rows = {}}
            records[src] = r
          end
          r.hi = off
          r.rows[#r.rows + 1] = {off, fx}
        end
      else
        dup = dup + 1
      end
      offs.done(src, off)
    end
  end
  offs.save()
  save_records()
end
return cjson.encode({applied, dup, rewards, failed, fxout})

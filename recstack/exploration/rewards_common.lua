-- Contextual bandit rewards -> LinUCB statistics in Redis (recstack/exploration/rewards.py).
-- Shared by rewards_apply.lua and rewards_settle.lua (prepended to each).
-- ARGV[1]: the key stems of recstack/features/keys.py as JSON (key = stem .. id, each one also
-- passed in KEYS by recstack/exploration/rewards.py):
-- linucb / hybrid (Keys.linear_arm), hybrid_shared (Keys.linear_shared),
-- ctx (Keys.bandit_contexts), pending (Keys.bandit_contexts_pending)
local K = cjson.decode(ARGV[1])
-- every key a script touches is one of KEYS (all under the {prefix bandit} tag: one slot); key()
-- returns a name built from a stem only after checking that the caller declared it
local declared = {}
for _, name in ipairs(KEYS) do declared[name] = true end
local function key(name)
  if not declared[name] then error('undeclared key ' .. name) end
  return name
end
local updates, resets = 0, 0
local function finite(v) return v == v and v ~= math.huge and v ~= -math.huge end
local function floats(data, pos, n)
  local t = {struct.unpack('<' .. string.rep('f', n), data, pos)}
  local nextpos = t[n + 1]
  t[n + 1] = nil
  for i = 1, n do
    if not finite(t[i]) then return nil, nextpos end
  end
  return t, nextpos
end
local function pack(t, n) return struct.pack('<' .. string.rep('f', n), unpack(t, 1, n)) end
local function load_state(key, format, dim, sizes)
  -- the blocks of a state hash (flat float tables of the given sizes) or nil (missing/corrupted)
  local h = redis.call('HMGET', key, 'format', 'dim', 'n', 'state')
  local n, total = tonumber(h[3]), 0
  for _, sz in ipairs(sizes) do total = total + sz end
  if h[1] ~= format or tonumber(h[2]) ~= dim or type(h[4]) ~= 'string' or #h[4] ~= 4 * total
    or n == nil or n < 0 then
    if h[1] or h[4] then resets = resets + 1 end
    return nil, 0
  end
  local blocks, pos = {}, 1
  for i, sz in ipairs(sizes) do
    blocks[i], pos = floats(h[4], pos, sz)
    if blocks[i] == nil then
      resets = resets + 1
      return nil, 0
    end
  end
  return blocks, n
end
local function diag_ok(m, d)
  for i = 1, d do
    if not (m[(i - 1) * d + i] > 0) then return false end
  end
  return true
end
local function scaled_identity(d, v)
  local m = {}
  for i = 1, d * d do m[i] = 0 end
  for i = 1, d do m[(i - 1) * d + i] = v end
  return m
end
local function zeros(n)
  local t = {}
  for i = 1, n do t[i] = 0 end
  return t
end
local function sm_update(item, xs, ridge, reward)
  -- disjoint LinUCB: A^{-1} <- A^{-1} - u u^T / (1 + x.u) with u = A^{-1} x; b <- b + r x
  local d = math.floor(#xs / 4)
  if d < 1 or #xs ~= 4 * d then return end
  local x = {struct.unpack('<' .. string.rep('f', d), xs)}
  local akey = key(K.linucb .. item)
  local blocks, n = load_state(akey, 'linucb-v1', d, {d * d, d})
  if blocks ~= nil and not diag_ok(blocks[1], d) then blocks, resets = nil, resets + 1 end
  if blocks == nil then blocks, n = {scaled_identity(d, 1 / ridge), zeros(d)}, 0 end
  local A, b = blocks[1], blocks[2]
  local u, den = {}, 1
  for i = 1, d do
    local s, base = 0, (i - 1) * d
    for j = 1, d do s = s + A[base + j] * x[j] end
    u[i] = s
    den = den + x[i] * s
  end
  for i = 1, d do
    local ui, base = u[i] / den, (i - 1) * d
    for j = 1, d do A[base + j] = A[base + j] - ui * u[j] end
    b[i] = b[i] + reward * x[i]
  end
  redis.call('HSET', akey, 'format', 'linucb-v1', 'dim', d, 'n', n + 1, 'state', pack(A, d * d) .. pack(b, d))
  updates = updates + 1
end
local function hybrid_update(item, xs, ridge, shared, reward)
  -- hybrid LinUCB: arm (A^{-1}, B, b) and shared (A0, b0) with the rank-one shared change
  -- ((z - v)(z - v)^T / s, (z - v)(r - x.w) / s), see linucb.hybrid_shared_delta
  local D = math.floor(#xs / 4)
  if D < 1 or #xs ~= 4 * D then return end
  local row = {struct.unpack('<' .. string.rep('f', D), xs)}
  local kd, dd, z, x = D, D, {}, {}
  if shared > 0 and shared < D then kd, dd = shared, D - shared end
  for i = 1, kd do z[i] = row[i] end
  for i = 1, dd do x[i] = row[D - dd + i] end
  local skey = key(K.hybrid_shared)
  local sb, sn = load_state(skey, 'linucb-hybrid-shared-v1', kd, {kd * kd, kd})
  if sb ~= nil and not diag_ok(sb[1], kd) then sb, resets = nil, resets + 1 end
  if sb == nil then sb, sn = {scaled_identity(kd, ridge), zeros(kd)}, 0 end
  local akey = key(K.hybrid .. item)
  local ab, an = load_state(akey, 'linucb-hybrid-v1', D, {dd * dd, dd * kd, dd})
  if ab ~= nil and not diag_ok(ab[1], dd) then ab, resets = nil, resets + 1 end
  if ab == nil then ab, an = {scaled_identity(dd, 1 / ridge), zeros(dd * kd), zeros(dd)}, 0 end
  local A0, b0, Ai, B, b = sb[1], sb[2], ab[1], ab[2], ab[3]
  local u, w, s, xw = {}, {}, 1, 0
  for i = 1, dd do
    local su, sw, base = 0, 0, (i - 1) * dd
    for j = 1, dd do
      su = su + Ai[base + j] * x[j]
      sw = sw + Ai[base + j] * b[j]
    end
    u[i], w[i] = su, sw
    s = s + x[i] * su
    xw = xw + x[i] * sw
  end
  local g = {}
  for j = 1, kd do g[j] = z[j] end
  for i = 1, dd do
    local ui, base = u[i], (i - 1) * kd
    for j = 1, kd do g[j] = g[j] - B[base + j] * ui end
  end
  local gr = (reward - xw) / s
  for i = 1, kd do
    local gi, base = g[i] / s, (i - 1) * kd
    for j = 1, kd do A0[base + j] = A0[base + j] + gi * g[j] end
    b0[i] = b0[i] + g[i] * gr
  end
  for i = 1, dd do
    local ui, base, xi = u[i] / s, (i - 1) * dd, x[i]
    for j = 1, dd do Ai[base + j] = Ai[base + j] - ui * u[j] end
    local bb = (i - 1) * kd
    for j = 1, kd do B[bb + j] = B[bb + j] + xi * z[j] end
    b[i] = b[i] + reward * xi
  end
  redis.call('HSET', skey, 'format', 'linucb-hybrid-shared-v1', 'dim', kd, 'n', sn + 1,
    'state', pack(A0, kd * kd) .. pack(b0, kd))
  redis.call('HSET', akey, 'format', 'linucb-hybrid-v1', 'dim', D, 'n', an + 1,
    'state', pack(Ai, dd * dd) .. pack(B, dd * kd) .. pack(b, dd))
  updates = updates + 1
end
local function meta_of(ckey)
  -- how the request's contexts were served: ridge, policy family (kind), hybrid shared_dim
  local h = redis.call('HMGET', ckey, 'ridge', 'kind', 'shared')
  return {ridge = tonumber(h[1]) or 1, kind = h[2] or 'linucb', shared = tonumber(h[3]) or 0}
end
local function reward_arm(meta, item, xs, reward)
  if meta.kind == 'linucb-hybrid' then
    hybrid_update(item, xs, meta.ridge, meta.shared, reward)
  else
    sm_update(item, xs, meta.ridge, reward)
  end
end

-- Shared by writer_user.lua and writer_groups.lua (prepended to each; recstack/features/writer.py).
-- Every key is one of KEYS, passed by index: no script builds a key (Redis Cluster routes a call by
-- its KEYS, which all share one slot).
local function fmt(x) return string.format('%.12g', x) end
local function fmt17(x) return string.format('%.17g', x) end
local transient = {'OOM', 'READONLY', 'LOADING', 'BUSY', 'MASTERDOWN', 'TRYAGAIN', 'CLUSTERDOWN',
  'NOREPLICAS'}
local function transient_code(msg)
  for _, code in ipairs(transient) do
    if string.sub(msg, 1, #code + 1) == code .. ' ' or string.find(msg, '-' .. code .. ' ', 1, true) then
      return code
    end
  end
end
local function errmsg(res) return type(res) == 'table' and tostring(res.err) or tostring(res) end
-- Applied offsets of one tag group: hash "topic:partition" -> newest offset applied in this group.
-- seen() skips events at or below it; save() writes the newest ones (also before a transient error,
-- so that the events applied so far are not applied again by the retry).
local function offsets(okey)
  local o = {key = okey, stored = {}, newest = {}}
  function o.seen(src, off)
    if src == '' or okey == nil then return false end
    if o.stored[src] == nil then o.stored[src] = tonumber(redis.call('HGET', okey, src) or '-1') end
    return off <= o.stored[src]
  end
  function o.done(src, off)
    if src ~= '' and okey ~= nil and (o.newest[src] == nil or off > o.newest[src]) then o.newest[src] = off end
  end
  function o.save()
    for src, off in pairs(o.newest) do
      if off > o.stored[src] then redis.call('HSET', okey, src, off) end
    end
  end
  return o
end

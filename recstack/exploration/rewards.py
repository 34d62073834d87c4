"""Rewards from the stream -> LinUCB sufficient statistics in Redis (Sherman-Morrison in Lua).

How the context of a decision reaches the reward. When the bandit service serves a contextual
policy (``linucb`` / ``lints``) it records, per request, the context vector of every item it put
into an exploration slot (``ContextRecorder``):

    {prefix}bandit:ctx:{request_id}   hash  ridge -> the policy's ridge;  x:{item} -> x (float32 LE, [d])
                                      TTL = reward window + CONTEXT_TTL_MARGIN_S

``request_id`` is the gateway's request id (gRPC metadata ``x-request-id``), the one the gateway
puts into the impression event. The stream then calls ``LinearRewardWriter.apply`` with every
batch (from ``FeatureWriter.apply``) and ``LinearRewardWriter.settle`` on its settle timer:

* impression with a request_id whose context hash exists: recorded items that are not in the
  served slate are dropped, and the request joins ``{prefix}bandit:ctx:pending`` (zset,
  score = impression ts + reward window);
* click / like / purchase with a request_id: if ``x:{item}`` is still in the hash it is deleted
  and the arm gets reward 1 (at most once per (request, item): a replayed batch or a like after
  the click finds no field and does nothing);
* settle: for every pending request whose window ended, each remaining ``x:{item}`` gets reward 0,
  then the hash and the pending entry are deleted.

Update. ``{prefix}bandit:linucb:{item}`` (the ``LinUCB.arm_hash`` format: ``format`` linucb-v1,
``dim``, ``n``, ``state`` = A^{-1} row-major then b, float32 LE) receives
``A^{-1} <- A^{-1} - (A^{-1}x)(A^{-1}x)^T / (1 + x^T A^{-1} x)``, ``b <- b + r x``, ``n += 1``
inside one Lua script per batch, so concurrent stream workers never lose an update (Redis runs
scripts one at a time). A missing arm starts at the prior ``A^{-1} = I / ridge``, ``b = 0``; an
arm whose stored state is unreadable (wrong format, dim or length, NaN/inf, non-positive
diagonal) is reset to that prior before the update, and the count of such resets is returned
and logged as a warning. LinTS reads the same statistics as LinUCB (``kind`` linucb).

Hybrid LinUCB. A request served by ``linucb-hybrid`` records ``kind`` linucb-hybrid and its
``shared`` dimension k in the context hash (0: z and x are both the whole row). Its rewards update
``{prefix}bandit:linucb-hybrid:{item}`` (``HybridLinUCB.arm_hash``: A_a^{-1}, B_a, b_a) and the
one shared hash ``{prefix}bandit:linucb-hybrid-shared`` (A0, b0) in the same script, with the
rank-one shared change of ``linucb.hybrid_shared_delta`` (O(d^2 + dk + k^2) per reward instead
of Algorithm 2's O(d^2 k)). Every reward of every request touches the shared hash, so hybrid
rewards serialise on it (Redis runs one script at a time anyway).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recstack.events.schema import REWARD_TYPES, UserEvent
from recstack.exploration.linucb import STATE_DTYPE

log = logging.getLogger(__name__)

CONTEXT_TTL_MARGIN_S = 3600
CONTEXT_FIELD = "x:"
REWARD_KINDS = ("linucb", "linucb-hybrid")


def context_key(request_id: str, prefix: str = "") -> str:
    """``{prefix}bandit:ctx:{request_id}``: the contexts recorded for one request."""
    return f"{prefix}bandit:ctx:{request_id}"


def pending_key(prefix: str = "") -> str:
    """``{prefix}bandit:ctx:pending``: request_id -> unix s when its reward window closes."""
    return f"{prefix}bandit:ctx:pending"


_LUA_COMMON = r"""
local prefix = ARGV[1]
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
  local akey = prefix .. 'bandit:linucb:' .. item
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
  local skey = prefix .. 'bandit:linucb-hybrid-shared'
  local sb, sn = load_state(skey, 'linucb-hybrid-shared-v1', kd, {kd * kd, kd})
  if sb ~= nil and not diag_ok(sb[1], kd) then sb, resets = nil, resets + 1 end
  if sb == nil then sb, sn = {scaled_identity(kd, ridge), zeros(kd)}, 0 end
  local akey = prefix .. 'bandit:linucb-hybrid:' .. item
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
"""

_APPLY_LUA = (
    _LUA_COMMON
    + r"""
local window = tonumber(ARGV[2])
local batch = cjson.decode(ARGV[3])
local opened, failed = 0, {}
local function apply_one(ev)
  local ckey = prefix .. 'bandit:ctx:' .. ev[2]
  if ev[1] == 'i' then
    if redis.call('EXISTS', ckey) == 0 then return end
    local served = {}
    for _, it in ipairs(ev[4]) do served['x:' .. it] = true end
    for _, f in ipairs(redis.call('HKEYS', ckey)) do
      if string.sub(f, 1, 2) == 'x:' and not served[f] then redis.call('HDEL', ckey, f) end
    end
    opened = opened + redis.call('ZADD', prefix .. 'bandit:ctx:pending', 'NX', ev[3] + window, ev[2])
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
"""
)

_SETTLE_LUA = (
    _LUA_COMMON
    + r"""
local pkey = prefix .. 'bandit:ctx:pending'
local reqs = redis.call('ZRANGEBYSCORE', pkey, '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, req in ipairs(reqs) do
  local ckey = prefix .. 'bandit:ctx:' .. req
  local flat = redis.call('HGETALL', ckey)
  local meta = meta_of(ckey)
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 'x:' then reward_arm(meta, string.sub(flat[i], 3), flat[i + 1], 0) end
  end
  redis.call('DEL', ckey)
  redis.call('ZREM', pkey, req)
end
return {#reqs, updates, resets}
"""
)


@dataclass(frozen=True)
class RewardResult:
    """updates: arm updates written; resets: corrupted arms reset to the prior first;
    requests: impressions that opened (apply) or closed (settle) a reward window."""

    updates: int
    resets: int
    requests: int


class LinearRewardWriter:
    """Applies stream rewards to the LinUCB statistics in Redis (see the module docstring).

    ``redis``: a ``redis.asyncio.Redis``; ``prefix``: the key prefix (``Keys.prefix``);
    ``reward_window_s``: how long after the impression a click still counts (the stream's).
    """

    def __init__(self, redis: Any, prefix: str = "", reward_window_s: float = 1800.0):
        self.redis = redis
        self.prefix = prefix
        self.reward_window_s = float(reward_window_s)
        self._apply = redis.register_script(_APPLY_LUA)
        self._settle = redis.register_script(_SETTLE_LUA)

    @staticmethod
    def entries(events: Sequence[UserEvent]) -> list[list[Any]]:
        """The events that matter to the contextual bandit: impressions and rewards that carry a
        request_id, encoded for the script."""
        out: list[list[Any]] = []
        for e in events:
            if not e.request_id:
                continue
            if e.event_type == "impression":
                out.append(["i", e.request_id, float(e.timestamp), list(e.items)])
            elif e.event_type in REWARD_TYPES and e.item_id:
                out.append(["r", e.request_id, e.item_id])
        return out

    async def apply(self, events: Sequence[UserEvent]) -> RewardResult:
        """One EVALSHA for the batch (none when no event carries a request_id). Raises
        redis.RedisError when Redis is unreachable; per-event script errors are logged."""
        batch = self.entries(events)
        if not batch:
            return RewardResult(0, 0, 0)
        payload = json.dumps(batch, separators=(",", ":"))
        updates, resets, opened, failed = await self._apply(
            keys=[], args=[self.prefix, self.reward_window_s, payload]
        )
        for error in failed:
            log.error("bandit reward not applied: %s", error.decode() if isinstance(error, bytes) else error)
        return self._result(updates, resets, opened)

    async def settle(self, now: float | None = None, limit: int = 1000) -> RewardResult:
        """Zero reward for every recorded item of the requests whose window closed before ``now``."""
        now = time.time() if now is None else now
        requests, updates, resets = await self._settle(keys=[], args=[self.prefix, repr(float(now)), limit])
        return self._result(updates, resets, requests)

    @staticmethod
    def _result(updates: Any, resets: Any, requests: Any) -> RewardResult:
        result = RewardResult(int(updates), int(resets), int(requests))
        if result.resets:
            log.warning(
                "%d LinUCB arm state(s) in Redis were corrupted and reset to the prior", result.resets
            )
        return result


class ContextRecorder:
    """Writes the contexts of a request's explored items (see the module docstring); used by the
    bandit service after each contextual decision. ``redis`` is a ``redis.asyncio.Redis``."""

    def __init__(self, redis: Any, prefix: str = "", reward_window_s: float = 1800.0):
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = int(reward_window_s) + CONTEXT_TTL_MARGIN_S

    async def record(
        self,
        request_id: str,
        items: Sequence[str],
        contexts: np.ndarray,
        ridge: float,
        kind: str = "linucb",
        shared_dim: int = 0,
    ) -> None:
        """HSET ridge, kind (the statistics the rewards update: ``linucb`` or ``linucb-hybrid``),
        shared (the hybrid model's shared_dim, 0 = the whole row) and x:{item} (float32 bytes of
        each row of ``contexts`` [N, d]) + EXPIRE."""
        if not request_id or not items:
            return
        if kind not in REWARD_KINDS:
            raise ValueError(f"kind must be one of {REWARD_KINDS}, got {kind!r}")
        mapping: dict[str, Any] = {"ridge": repr(float(ridge)), "kind": kind, "shared": str(int(shared_dim))}
        x = np.ascontiguousarray(contexts, dtype=STATE_DTYPE)
        for item, row in zip(items, x, strict=True):
            mapping[CONTEXT_FIELD + item] = row.tobytes()
        key = context_key(request_id, self.prefix)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, self.ttl_s)
        await pipe.execute()

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
local function sm_update(item, xs, ridge, reward)
  local d = math.floor(#xs / 4)
  if d < 1 or #xs ~= 4 * d then return end
  local fmt = '<' .. string.rep('f', d)
  local x = {struct.unpack(fmt, xs)}
  local akey = prefix .. 'bandit:linucb:' .. item
  local h = redis.call('HMGET', akey, 'format', 'dim', 'n', 'state')
  local A, b, n = {}, {}, tonumber(h[3])
  local ok = h[1] == 'linucb-v1' and tonumber(h[2]) == d and type(h[4]) == 'string'
    and #h[4] == 4 * (d * d + d) and n ~= nil and n >= 0
  if ok then
    local pos = 1
    for i = 1, d do
      local row = {struct.unpack(fmt, h[4], pos)}
      pos = row[d + 1]
      for j = 1, d do
        if not finite(row[j]) then ok = false end
      end
      if not (row[i] > 0) then ok = false end
      A[i] = row
    end
    b = {struct.unpack(fmt, h[4], pos)}
    for j = 1, d do
      if not finite(b[j]) then ok = false end
    end
  end
  if not ok then
    if h[1] or h[4] then resets = resets + 1 end
    A, b, n = {}, {}, 0
    for i = 1, d do
      local row = {}
      for j = 1, d do row[j] = 0 end
      row[i] = 1 / ridge
      A[i] = row
      b[i] = 0
    end
  end
  local u, den = {}, 1
  for i = 1, d do
    local s, row = 0, A[i]
    for j = 1, d do s = s + row[j] * x[j] end
    u[i] = s
    den = den + x[i] * s
  end
  local parts = {}
  for i = 1, d do
    local row, ui = A[i], u[i] / den
    for j = 1, d do row[j] = row[j] - ui * u[j] end
    parts[i] = struct.pack(fmt, unpack(row, 1, d))
    b[i] = b[i] + reward * x[i]
  end
  parts[d + 1] = struct.pack(fmt, unpack(b, 1, d))
  redis.call('HSET', akey, 'format', 'linucb-v1', 'dim', d, 'n', n + 1, 'state', table.concat(parts))
  updates = updates + 1
end
local function ridge_of(ckey) return tonumber(redis.call('HGET', ckey, 'ridge')) or 1 end
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
      sm_update(ev[3], xs, ridge_of(ckey), 1)
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
  local ridge = ridge_of(ckey)
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 'x:' then sm_update(string.sub(flat[i], 3), flat[i + 1], ridge, 0) end
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

    async def record(self, request_id: str, items: Sequence[str], contexts: np.ndarray, ridge: float) -> None:
        """HSET ridge and x:{item} (float32 bytes of each row of ``contexts`` [N, d]) + EXPIRE."""
        if not request_id or not items:
            return
        mapping: dict[str, Any] = {"ridge": repr(float(ridge))}
        x = np.ascontiguousarray(contexts, dtype=STATE_DTYPE)
        for item, row in zip(items, x, strict=True):
            mapping[CONTEXT_FIELD + item] = row.tobytes()
        key = context_key(request_id, self.prefix)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, self.ttl_s)
        await pipe.execute()

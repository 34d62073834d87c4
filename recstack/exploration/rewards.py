"""Rewards from the stream -> LinUCB sufficient statistics in Redis (Sherman-Morrison in Lua).

How the context of a decision reaches the reward. When the bandit service serves a contextual
policy (``linucb`` / ``lints``) it records, per request, the context vector of every item it put
into an exploration slot (``ContextRecorder``):

    {{prefix}bandit}:ctx:{request_id}   hash  ridge -> the policy's ridge;  x:{item} -> x (float32 LE, [d])
                                      TTL = reward window + CONTEXT_TTL_MARGIN_S

``request_id`` is the gateway's request id (gRPC metadata ``x-request-id``), the one the gateway
puts into the impression event. The stream then calls ``LinearRewardWriter.apply`` with every
batch (``FeatureWriter.apply``, given it as ``bandit_rewards``) and ``LinearRewardWriter.settle`` on
its settle timer:

* impression with a request_id whose context hash exists: recorded items that are not in the
  served slate are dropped, and the request joins ``{{prefix}bandit}:ctx:pending`` (zset,
  score = impression ts + reward window);
* click / like / purchase with a request_id: if ``x:{item}`` is still in the hash it is deleted
  and the arm gets reward 1 (at most once per (request, item): a replayed batch or a like after
  the click finds no field and does nothing);
* settle: for every pending request whose window ended, each remaining ``x:{item}`` gets reward 0,
  then the hash and the pending entry are deleted.

Update. ``{{prefix}bandit}:linucb:{item}`` (the ``LinUCB.arm_hash`` format: ``format`` linucb-v1,
``dim``, ``n``, ``state`` = A^{-1} row-major then b, float32 LE) receives
``A^{-1} <- A^{-1} - (A^{-1}x)(A^{-1}x)^T / (1 + x^T A^{-1} x)``, ``b <- b + r x``, ``n += 1``
inside one Lua script per batch (rewards_apply.lua / rewards_settle.lua after rewards_common.lua,
next to this module; their keys, named from the stems of recstack/features/keys.py, are all
passed in KEYS and share the one ``{{prefix}bandit}`` hash tag: one Redis Cluster slot), so
concurrent stream workers never lose an update (Redis runs scripts one at a time). A missing
arm starts at the prior ``A^{-1} = I / ridge``, ``b = 0``; an arm whose stored state is
unreadable (wrong format, dim or length, NaN/inf, non-positive diagonal) is reset to that prior
before the update, and the count of such resets is returned and logged as a warning. LinTS
reads the same statistics as LinUCB (``kind`` linucb).

Hybrid LinUCB. A request served by ``linucb-hybrid`` records ``kind`` linucb-hybrid and its
``shared`` dimension k in the context hash (0: z and x are both the whole row). Its rewards update
``{{prefix}bandit}:linucb-hybrid:{item}`` (``HybridLinUCB.arm_hash``: A_a^{-1}, B_a, b_a) and the
one shared hash ``{{prefix}bandit}:linucb-hybrid-shared`` (A0, b0) in the same script, with the
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

from recstack import lua
from recstack.events.schema import REWARD_TYPES, UserEvent
from recstack.exploration.state_codec import STATE_DTYPE
from recstack.features.keys import Keys
from recstack.redis_cluster import ensure_initialized

log = logging.getLogger(__name__)

CONTEXT_TTL_MARGIN_S = 3600
CONTEXT_FIELD = "x:"
REWARD_KINDS = ("linucb", "linucb-hybrid")


def key_stems(keys: Keys) -> str:
    """The key stems the reward scripts build their keys from (key = stem + id), as JSON."""
    return json.dumps(
        {
            "linucb": keys.linear_arm("", "linucb"),
            "hybrid": keys.linear_arm("", "linucb-hybrid"),
            "hybrid_shared": keys.linear_shared("linucb-hybrid"),
            "ctx": keys.bandit_contexts(""),
            "pending": keys.bandit_contexts_pending(),
        }
    )


_APPLY_LUA = lua.load(__package__, "rewards_common.lua", "rewards_apply.lua")
_SETTLE_LUA = lua.load(__package__, "rewards_common.lua", "rewards_settle.lua")
_RECORD_LUA = lua.load(__package__, "rewards_record.lua")


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
        self.keys = Keys(prefix)
        self._stems = key_stems(self.keys)
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
        await ensure_initialized(self.redis)
        keys = {self.keys.bandit_contexts_pending(): None, self.keys.linear_shared("linucb-hybrid"): None}
        for entry in batch:
            keys[self.keys.bandit_contexts(entry[1])] = None
            if entry[0] == "r":
                keys.update(dict.fromkeys(self._arm_keys(entry[2])))
        updates, resets, opened, failed = await self._apply(
            keys=list(keys), args=[self._stems, self.reward_window_s, payload]
        )
        for error in failed:
            log.error("bandit reward not applied: %s", error.decode() if isinstance(error, bytes) else error)
        return self._result(updates, resets, opened)

    async def settle(self, now: float | None = None, limit: int = 1000) -> RewardResult:
        """Zero reward for every recorded item of the requests whose window closed before ``now``."""
        now = time.time() if now is None else now
        await ensure_initialized(self.redis)
        pending = self.keys.bandit_contexts_pending()
        due = [_text(r) for r in await self.redis.zrangebyscore(pending, "-inf", repr(float(now)), 0, limit)]
        if not due:
            return RewardResult(0, 0, 0)
        pipe = self.redis.pipeline(transaction=False)
        for req in due:
            pipe.hkeys(self.keys.bandit_contexts(req))
        keys = {pending: None, self.keys.linear_shared("linucb-hybrid"): None}
        for req, fields in zip(due, await pipe.execute(), strict=True):
            keys[self.keys.bandit_contexts(req)] = None
            for field in map(_text, fields):
                if field.startswith(CONTEXT_FIELD):
                    keys.update(dict.fromkeys(self._arm_keys(field[len(CONTEXT_FIELD) :])))
        args = [self._stems, json.dumps(due, separators=(",", ":"))]
        requests, updates, resets = await self._settle(keys=list(keys), args=args)
        return self._result(updates, resets, requests)

    def _arm_keys(self, item: str) -> tuple[str, str]:
        """The arms a reward of ``item`` may update (the request's recorded kind decides which)."""
        return self.keys.linear_arm(item, "linucb"), self.keys.linear_arm(item, "linucb-hybrid")

    @staticmethod
    def _result(updates: Any, resets: Any, requests: Any) -> RewardResult:
        result = RewardResult(int(updates), int(resets), int(requests))
        if result.resets:
            log.warning(
                "%d LinUCB arm state(s) in Redis were corrupted and reset to the prior", result.resets
            )
        return result


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class ContextRecorder:
    """Writes the contexts of a request's explored items (see the module docstring); used by the
    bandit service after each contextual decision. ``redis`` is a ``redis.asyncio.Redis``."""

    def __init__(self, redis: Any, prefix: str = "", reward_window_s: float = 1800.0):
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = int(reward_window_s) + CONTEXT_TTL_MARGIN_S
        self._record = redis.register_script(_RECORD_LUA)

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
        key = Keys(self.prefix).bandit_contexts(request_id)
        flat = [part for pair in mapping.items() for part in pair]
        # HSET + EXPIRE atomically in one single-key script (a MULTI pipeline of redis-py 8.1's
        # asyncio RedisCluster breaks the client's later broadcasts, e.g. SCRIPT LOAD)
        await self._record(keys=[key], args=[self.ttl_s, *flat])

"""Serving the contextual policies (LinUCB, LinTS, hybrid LinUCB) from Redis state; pure, no grpc.

* ``ContextualExplorer``: validates one request, builds contexts (``ContextBuilder``,
  recstack/exploration/context.py), refreshes the arm state (``LinearStateCache``,
  recstack/exploration/linear_store.py: Redis slow or down -> the last state loaded, the
  decision marked stale), selects the slate and records the explored items' contexts for the
  reward join (``ContextRecorder``, fire-and-forget: a failed write is logged, the decision is
  served anyway).
* ``make_policies`` / ``make_state_caches``: the policies a bandit service offers and their caches.

Behaviour on edge cases (the bandit service documents the same): no candidates -> empty slate;
``k`` larger than the candidates -> a slate of all candidates; ``explore_slots`` larger than the
slate -> every position explored; NaN/inf upstream scores or genre scores -> ``NonFiniteInputError``;
duplicate candidate ids -> ``PolicyInputError``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recstack.exploration.base import PolicyInputError, SlateDecision
from recstack.exploration.context import ContextBuilder
from recstack.exploration.linear_store import LinearPolicy, LinearStateCache
from recstack.exploration.linucb import HybridLinUCB, LinTS, LinUCB
from recstack.exploration.rewards import ContextRecorder

log = logging.getLogger(__name__)


class ContextualExplorer:
    """One contextual decision per request (see the module docstring).

    policies: name -> policy (``linucb``, ``lints``, ``linucb-hybrid``); states: name -> the
    ``LinearStateCache`` that loads that policy's statistics (``make_state_caches``);
    recorder: where explored contexts go for the reward join (None: not recorded).
    """

    def __init__(
        self,
        policies: Mapping[str, LinearPolicy],
        builder: ContextBuilder,
        states: Mapping[str, LinearStateCache],
        recorder: ContextRecorder | None = None,
        explore_slots: int = 1,
    ):
        self.policies = dict(policies)
        self.builder = builder
        if set(states) != set(self.policies):
            raise ValueError(f"states {sorted(states)} do not match policies {sorted(self.policies)}")
        self.states = dict(states)
        self.recorder = recorder
        self.explore_slots = explore_slots
        self._tasks: set[asyncio.Task] = set()

    async def explore(
        self,
        policy: str,
        user_genre_scores: Mapping[str, float],
        items: Sequence[str],
        scores: Sequence[float] | np.ndarray,
        k: int,
        explore_slots: int | None = None,
        request_id: str = "",
    ) -> tuple[SlateDecision, bool]:
        """(slate, stale). Raises ``PolicyInputError`` subclasses on bad input (see the module)."""
        chosen = self.policies.get(policy)
        if chosen is None:
            raise PolicyInputError(f"policy must be one of {sorted(self.policies)}, got {policy!r}")
        if k < 1:
            raise PolicyInputError(f"k must be >= 1, got {k}")
        if not items:
            return SlateDecision([], np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool)), False
        contexts = self.builder.build(user_genre_scores, items, scores)
        size = min(k, len(items))
        slots = min(self.explore_slots if explore_slots is None else explore_slots, size)
        if slots < 0:
            raise PolicyInputError(f"explore_slots must be >= 0, got {slots}")
        stale = await self.states[policy].refresh(items)
        decision = chosen.select(contexts, items, size, slots)
        if self.recorder is not None and request_id and slots:
            explored = [i for i, e in enumerate(decision.explored.tolist()) if e]
            served = [decision.items[i] for i in explored]
            index = {item: i for i, item in enumerate(items)}
            rows = contexts[[index[item] for item in served]]
            task = asyncio.create_task(self._record(request_id, served, rows, chosen))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return decision, stale

    async def _record(
        self, request_id: str, items: list[str], rows: np.ndarray, policy: LinearPolicy
    ) -> None:
        shared = getattr(policy, "shared_dim", None) or 0
        try:
            async with asyncio.timeout(1.0):
                await self.recorder.record(request_id, items, rows, policy.ridge, policy.kind, shared)
        except Exception as exc:  # the decision is served; only its learning signal is lost
            log.warning("contexts of request %s not recorded: %r", request_id, exc)


def make_policies(
    d: int,
    alpha: float,
    epsilon: float,
    ridge: float,
    v: float,
    seed: int | None,
    n_draws: int,
    hybrid_shared_dim: int | None = None,
) -> dict[str, LinearPolicy]:
    """``linucb`` and ``lints`` over one shared arm state (LinTS reads LinUCB's statistics), and
    ``linucb-hybrid`` with its own (shared features: the first ``hybrid_shared_dim`` columns,
    None = the whole row)."""
    linucb = LinUCB(d, alpha=alpha, epsilon=epsilon, ridge=ridge, seed=seed)
    lints = LinTS(d, v=v, ridge=ridge, seed=None if seed is None else seed + 1, n_draws=n_draws)
    lints.share_state(linucb)
    hybrid = HybridLinUCB(
        d,
        shared_dim=hybrid_shared_dim,
        alpha=alpha,
        epsilon=epsilon,
        ridge=ridge,
        seed=None if seed is None else seed + 2,
    )
    return {p.name: p for p in (linucb, lints, hybrid)}  # the names of CONTEXTUAL_POLICIES


def make_state_caches(
    redis: Any,
    policies: Mapping[str, LinearPolicy],
    prefix: str = "",
    ttl_s: float = 5.0,
    timeout_s: float = 0.05,
) -> dict[str, LinearStateCache]:
    """One ``LinearStateCache`` per distinct statistics object: policies that share state
    (``lints`` and ``linucb``) share the cache, so an arm is read once for both."""
    by_state: dict[int, LinearStateCache] = {}
    out: dict[str, LinearStateCache] = {}
    for name, policy in policies.items():
        key = id(policy._arms)
        if key not in by_state:
            by_state[key] = LinearStateCache(redis, policy, prefix, ttl_s, timeout_s)
        out[name] = by_state[key]
    return out

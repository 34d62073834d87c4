"""Serving the contextual policies (LinUCB, LinTS) from Redis state; pure, no grpc.

* ``ContextBuilder``: the context matrix [C, d] of one request in one vectorised pass, row for row
  equal to ``linucb.build_context`` (user genre scores, the item's genres from the bundle
  catalogue, the upstream ranking score).
* ``LinearStateCache``: reads the candidates' ``bandit:linucb:{item}`` hashes (written by the
  stream, ``recstack.exploration.rewards``) into the policy with a short TTL, one pipelined round
  trip under a deadline. Redis slow or down: the policy keeps the last state it loaded (the prior
  for arms never read) and the decision is marked stale. A corrupted hash resets that arm to the
  prior with a logged warning (``LinUCB.load_arm``).
* ``ContextualExplorer``: validates one request, builds contexts, refreshes state, selects the
  slate and records the explored items' contexts for the reward join (``ContextRecorder``,
  fire-and-forget: a failed write is logged, the decision is served anyway).

Behaviour on edge cases (the bandit service documents the same): no candidates -> empty slate;
``k`` larger than the candidates -> a slate of all candidates; ``explore_slots`` larger than the
slate -> every position explored; NaN/inf upstream scores or genre scores -> ``NonFiniteInputError``;
duplicate candidate ids -> ``PolicyInputError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from recstack.exploration.base import NonFiniteInputError, PolicyInputError, SlateDecision
from recstack.exploration.linucb import (
    CONTEXT_FIXED,
    HybridLinUCB,
    LinTS,
    LinUCB,
    build_context,
    install_state,
    queue_state_reads,
)
from recstack.exploration.rewards import ContextRecorder

log = logging.getLogger(__name__)

CONTEXTUAL_POLICIES = ("linucb", "lints", "linucb-hybrid")
LinearPolicy = LinUCB | HybridLinUCB


class ContextBuilder:
    """Contexts of (user, candidate) pairs; the layout is ``build_context``'s.

    genre_vocab: the bundle's genre vocabulary; item_genres: item id -> genres; d: dimension (>= 5).
    """

    def __init__(self, genre_vocab: Sequence[str], item_genres: Mapping[str, Sequence[str]], d: int = 32):
        build_context({}, [], [], 0.0, d)  # validates d
        self.d = d
        self.genre_vocab = list(genre_vocab)
        self.g = (d - CONTEXT_FIXED) // 2
        self._pos = {genre: j for j, genre in enumerate(self.genre_vocab)}
        v = len(self.genre_vocab)
        self._index = {item: r + 1 for r, item in enumerate(item_genres)}
        counts = np.zeros((len(self._index) + 1, v))  # row 0: unknown item, no genres
        for item, genres in item_genres.items():
            for genre in genres:
                j = self._pos.get(genre)
                if j is not None:
                    counts[self._index[item], j] += 1.0
        fold = np.zeros((v, self.g))
        fold[np.arange(v), np.arange(v) % self.g] = 1.0
        self._counts = counts
        self._n_known = counts.sum(axis=1)
        self._indicator = (counts @ fold > 0).astype(np.float64)
        self._fold = fold

    @classmethod
    def from_artifacts(cls, artifacts: str | Path, d: int = 32) -> ContextBuilder:
        """From the current bundle's catalog.json (``genre_vocab`` and ``genres``); raises
        ``recstack.features.catalog.CatalogError`` when there is no bundle."""
        from recstack.features.catalog import CatalogError, resolve_version_dir

        path = resolve_version_dir(artifacts) / "catalog.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CatalogError(f"{path} could not be read: {exc}") from exc
        genres = data.get("genres") if isinstance(data, dict) else None
        if not isinstance(genres, dict) or not all(isinstance(g, list) for g in genres.values()):
            raise CatalogError(f"{path} has no 'genres' object (item_id -> [genre, ...])")
        vocab = data.get("genre_vocab") or sorted({g for gs in genres.values() for g in gs})
        if not isinstance(vocab, list):
            raise CatalogError(f"{path}: 'genre_vocab' must be a list of genres")
        return cls([str(g) for g in vocab], {str(k): [str(g) for g in v] for k, v in genres.items()}, d)

    def build(
        self, user_genre_scores: Mapping[str, float], items: Sequence[str], scores: np.ndarray
    ) -> np.ndarray:
        """Contexts [C, d] of the candidates ``items`` [C] with upstream ``scores`` [C]."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(items),):
            raise PolicyInputError(f"scores must have shape ({len(items)},), got {scores.shape}")
        if not np.isfinite(scores).all():
            bad = int(np.flatnonzero(~np.isfinite(scores))[0])
            raise NonFiniteInputError(f"candidate {items[bad]!r} has a non-finite score ({scores[bad]})")
        user = np.zeros(len(self.genre_vocab))
        for genre, value in user_genre_scores.items():
            j = self._pos.get(genre)
            if j is not None:
                if not np.isfinite(value):
                    raise NonFiniteInputError(f"user genre score of {genre!r} is not finite: {value}")
                user[j] += float(value)
        rows = np.fromiter(map(self._index.get, items, repeat(0)), dtype=np.intp, count=len(items))
        x = np.zeros((len(items), self.d))
        g = self.g
        x[:, 0] = 1.0
        x[:, 1] = scores
        known = self._n_known[rows]
        x[:, 2] = np.divide(self._counts[rows] @ user, known, out=np.zeros(len(items)), where=known > 0)
        x[:, CONTEXT_FIXED : CONTEXT_FIXED + g] = self._indicator[rows]
        x[:, CONTEXT_FIXED + g : CONTEXT_FIXED + 2 * g] = user @ self._fold
        return x


class LinearStateCache:
    """Loads a linear policy's arm hashes from Redis (LinUCB's are shared by LinTS; hybrid LinUCB
    also reads its shared ``A0, b0`` hash) with a TTL.

    redis: ``redis.asyncio.Redis`` with bytes responses; ttl_s: freshness of an arm (and of the
    hybrid shared statistics); timeout_s: deadline of one read; prefix: the Redis key prefix.
    """

    def __init__(
        self,
        redis: Any,
        policy: LinearPolicy,
        prefix: str = "",
        ttl_s: float = 5.0,
        timeout_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.redis = redis
        self.policy = policy
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._fetched: dict[str, float] = {}
        self._shared_fetched = -np.inf

    async def refresh(self, items: Sequence[str]) -> bool:
        """Bring the arms of ``items`` up to date; returns True (stale) when Redis failed."""
        now = self._clock()
        missing = [x for x in items if now - self._fetched.get(x, -np.inf) > self.ttl_s]
        hybrid = isinstance(self.policy, HybridLinUCB)
        shared = hybrid and now - self._shared_fetched > self.ttl_s
        if not missing and not shared:
            return False
        try:
            async with asyncio.timeout(self.timeout_s):
                pipe = self.redis.pipeline(transaction=False)
                queue_state_reads(pipe, self.policy, missing, self.prefix, shared)
                replies = await pipe.execute()
        except Exception as exc:  # Redis down or slow: keep the last state
            log.warning("%s state unavailable, serving the last loaded state: %r", self.policy.kind, exc)
            return True
        install_state(self.policy, missing, replies, shared)
        if shared:
            self._shared_fetched = now
        for item in missing:
            self._fetched[item] = now
        return False


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
    return {"linucb": linucb, "lints": lints, "linucb-hybrid": hybrid}


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

"""The gateway's recommendation chain: an ordered list of named stages over one RecommendState.

A stage is an object with ``name``, ``timeout_s``, ``applies(state) -> bool`` and
``async __call__(state) -> None``. A stage must finish all of its awaits before it writes to the
state, so a stage cancelled at its deadline leaves the state untouched. The chain runs each
applicable stage under its own deadline; a stage that raises or times out is skipped: the state
keeps the previous ordering, ``skipped[stage]`` gets the reason and ``degraded`` turns true.

The same chain runs over gRPC (production) and in-process (tests): only the stage backends
differ (recstack/serving/stages.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol

import numpy as np
from prometheus_client import Counter, Histogram

from recstack import tracing
from recstack.experiments.assignment import PipelineConfig
from recstack.exploration.segments import request_segment
from recstack.features.types import UserFeatures

log = logging.getLogger(__name__)

STAGE_LATENCY = Histogram(
    "recstack_gateway_stage_latency_seconds",
    "Latency of one gateway chain stage, by stage and outcome (ok, error, timeout).",
    ["stage", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0),
)
STAGE_SKIPPED = Counter(
    "recstack_gateway_stage_skipped",
    "Stages skipped because they failed or timed out, by stage.",
    ["stage"],
)
FALLBACKS = Counter(
    "recstack_gateway_fallbacks",
    "Fallbacks taken by the gateway, by kind (popularity, catalog_popularity, fill).",
    ["kind"],
)


@dataclass
class RecommendState:
    """Everything one Recommend request carries through the chain.

    candidates: item ids in the current order, best first [N]; scores: float64 [N] aligned with
    them; components: named scores of the stages, {name: [N] aligned with the candidates, NaN where
    a stage did not score an item} (retrieval, two_tower, ranking, p_click ...); propensities: [N]
    once the bandit ran, else None.
    """

    request_id: str
    user_id: str
    k: int
    variant: str = ""
    experiment_id: str = ""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    exclude: set[str] = field(default_factory=set)
    allow_consumed: bool = False
    attributes: dict[str, str] = field(default_factory=dict)
    user: UserFeatures | None = None
    known_user: bool = False
    candidates: list[str] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    components: dict[str, np.ndarray] = field(default_factory=dict)
    propensities: np.ndarray | None = None
    stages_ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    degraded: bool = False
    model_versions: dict[str, str] = field(default_factory=dict)
    # Event-loop time (loop.time()) by which the reply must be ready (the caller's deadline minus a
    # margin); None: only the per-stage deadlines apply.
    deadline: float | None = None

    @property
    def features(self) -> UserFeatures:
        """The user's features (empty ones until the features stage ran)."""
        if self.user is None:
            self.user = UserFeatures(user_id=self.user_id)
        return self.user

    @property
    def bandit_segment(self) -> str:
        """The request's Thompson segment per ``pipeline.segment_by`` ("" = none): a context
        attribute or the user's top real-time genre, as a valid segment id. Read by the bandit
        stage and recorded in the impression; it depends on the user features, so it is final
        once the features stage ran."""
        if not self.pipeline.segment_by:
            return ""
        return request_segment(self.pipeline.segment_by, self.attributes, self.features.genre_scores)

    @property
    def cold_start(self) -> bool:
        """Unknown user: no real-time features and not among the bundle's users."""
        return not self.known_user and self.features.is_cold

    @property
    def never_show(self) -> set[str]:
        """Items retrieval and fallbacks must not return: context exclusions, and what the user
        consumed (recent items and the stream's consumed set) unless ``allow_consumed``."""
        if self.allow_consumed:
            return set(self.exclude)
        return self.exclude | set(self.features.recent_items) | set(self.features.consumed)

    def set_ranking(
        self,
        items: Sequence[str],
        scores: np.ndarray | Sequence[float],
        components: Mapping[str, np.ndarray] | None = None,
        propensities: np.ndarray | Sequence[float] | None = None,
    ) -> None:
        """Replace the current ordering (drops excluded and duplicate ids, keeps the first).

        components: the stage's named scores, {name: [N] aligned with ``items``}; the earlier
        stages' are carried over to the new order (NaN for an item they did not score).
        propensities [N] are kept aligned with the items; None clears them (a new ordering made
        after the bandit has no propensities)."""
        arr = np.asarray(scores, dtype=np.float64)
        if arr.shape != (len(items),):
            raise ValueError(f"scores must have shape ({len(items)},), got {arr.shape}")
        items = list(items)
        distinct = set(items)
        if len(distinct) == len(items) and distinct.isdisjoint(self.exclude):
            keep = np.ones(len(items), dtype=bool)  # the common case, without a Python loop
            kept = items
        else:
            seen: set[str] = set()
            keep = np.zeros(len(items), dtype=bool)
            for i, item in enumerate(items):
                if item not in seen and item not in self.exclude:
                    keep[i] = True
                seen.add(item)
            kept = [item for item, k in zip(items, keep, strict=True) if k]
        if self.components and kept != self.candidates:  # carry earlier stages' scores over
            position = dict(zip(self.candidates, range(len(self.candidates)), strict=True))
            idx = np.fromiter(map(position.get, kept, repeat(-1)), dtype=np.int64, count=len(kept))
            found = idx >= 0
            for name, values in self.components.items():
                moved = np.full(len(kept), np.nan)
                moved[found] = values[idx[found]]
                self.components[name] = moved
        for name, values in (components or {}).items():
            self.components[name] = np.asarray(values, dtype=np.float64)[keep]
        self.candidates = kept
        self.scores = arr[keep]
        self.propensities = None if propensities is None else np.asarray(propensities, np.float64)[keep]

    def served_propensities(self) -> np.ndarray:
        """The probability with which each served item was placed: the bandit's, or 1.0 where no
        exploration policy ran (a deterministic slate; off-policy estimators divide by it)."""
        if self.propensities is None:
            return np.ones(len(self.candidates))
        return np.where(self.propensities > 0, self.propensities, 1.0)

    def mark_degraded(self, stage: str, reason: str) -> None:
        self.skipped[stage] = reason
        self.degraded = True


class Stage(Protocol):
    name: str
    timeout_s: float

    def applies(self, state: RecommendState) -> bool: ...

    async def __call__(self, state: RecommendState) -> None: ...


def _reason(exc: BaseException) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # a gRPC error (grpc.aio.AioRpcError)
        return f"{getattr(code(), 'name', code())}: {details()}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Chain:
    """Runs stages in order; each under its own deadline; failures degrade instead of failing."""

    def __init__(self, stages: Sequence[Stage], fill_items: Collection[str] = ()):
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.stages = list(stages)
        self.fill_items = list(fill_items)

    async def run_stage(self, stage: Stage, state: RecommendState) -> bool:
        """Run one stage; return True when it ran, False when it failed or timed out."""
        with tracing.span(f"stage.{stage.name}") as span:
            outcome = await self._run_stage(stage, state)
            if outcome != "ok" and span.is_recording():
                span.set_attribute("recstack.outcome", outcome)
                span.set_status(tracing.StatusCode.ERROR, state.skipped[stage.name])
        if outcome == "ok":
            state.stages_ran.append(stage.name)
            return True
        STAGE_SKIPPED.labels(stage.name).inc()
        if outcome != "deadline":
            log.warning("stage %s skipped: %s", stage.name, state.skipped[stage.name])
        return False

    async def _run_stage(self, stage: Stage, state: RecommendState) -> str:
        """Run one stage under its deadline; the outcome: ok, error, timeout or deadline."""
        start = time.perf_counter()
        outcome = "ok"
        timeout_s = stage.timeout_s
        if state.deadline is not None:
            timeout_s = min(timeout_s, state.deadline - asyncio.get_running_loop().time())
            if timeout_s <= 0:
                state.mark_degraded(stage.name, "request deadline reached")
                return "deadline"
        try:
            async with asyncio.timeout(timeout_s):
                await stage(state)
        except TimeoutError:
            outcome = "timeout"
            state.mark_degraded(stage.name, f"timeout after {timeout_s * 1000:.0f} ms")
        except Exception as exc:  # a stage failure must never fail the reply
            outcome = "error"
            state.mark_degraded(stage.name, _reason(exc))
        finally:
            STAGE_LATENCY.labels(stage.name, outcome).observe(time.perf_counter() - start)
        return outcome

    async def run(self, state: RecommendState) -> RecommendState:
        for stage in self.stages:
            if stage.applies(state):
                await self.run_stage(stage, state)
        self.finish(state)
        return state

    def finish(self, state: RecommendState) -> None:
        """Top k, distinct, no excluded ids; tops up from ``fill_items`` when short."""
        state.set_ranking(state.candidates, state.scores, propensities=state.propensities)
        if len(state.candidates) < state.k and self.fill_items:
            have, never = set(state.candidates), state.never_show
            extra = [x for x in self.fill_items if x not in have and x not in never][
                : state.k - len(state.candidates)
            ]
            if extra:
                FALLBACKS.labels("fill").inc()
                state.stages_ran.append("fill")
                n_before = len(state.candidates)
                floor = float(state.scores.min()) if n_before else 0.0
                state.candidates = state.candidates + extra
                state.scores = np.concatenate([state.scores, np.full(len(extra), floor - 1.0)])
                if state.propensities is not None:  # placed without exploration: propensity 1
                    state.propensities = np.concatenate([state.propensities, np.ones(len(extra))])
        state.candidates = state.candidates[: state.k]
        state.scores = state.scores[: state.k]
        if state.propensities is not None:
            state.propensities = state.propensities[: state.k]

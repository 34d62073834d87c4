"""The gateway's chain stages and their two kinds of backends.

Stages (recstack.serving.chain.Stage): features -> retrieval -> popularity (only when there are
no candidates: cold start or retrieval failed) -> ranking -> rerank (only with recent items and
when the variant enables it) -> diversity (when the variant sets a method) -> bandit (when the
variant has exploration slots). Each stage talks to a backend:

- gRPC backends (``Grpc*``): production, one stub call with the stage's deadline;
- in process: ``LocalBandit`` (the Thompson policy over an ``ArmCache``) or any object with the
  backend's method (the backend protocols below; tests use small fakes).

Every backend returns a ``StageResult``, so the same chain runs either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from recstack.exploration.arms import ArmCache
from recstack.exploration.segments import is_valid_segment
from recstack.exploration.thompson import ThompsonSlatePolicy
from recstack.features.types import UserFeatures
from recstack.rpc.client import call
from recstack.rpc.convert import components_by_name, scored_items, user_to_proto
from recstack.serving.chain import FALLBACKS, RecommendState
from recstack.v1 import (
    bandit_pb2,
    bandit_pb2_grpc,
    ranking_pb2,
    ranking_pb2_grpc,
    rerank_pb2,
    rerank_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """items [N] best first, scores [N], optional per-item component scores and propensities [N]."""

    items: list[str]
    scores: np.ndarray
    version: str = ""
    components: dict[str, dict[str, float]] = field(default_factory=dict)
    propensities: np.ndarray | None = None
    stale: bool = False


class FeatureSource(Protocol):
    async def get_user_features(self, user_id: str) -> UserFeatures: ...

    async def get_popular(self, n: int) -> list[str]: ...


class RetrievalBackend(Protocol):
    async def retrieve(self, user: UserFeatures, n: int, exclude: Collection[str]) -> StageResult: ...


class RankingBackend(Protocol):
    async def rank(
        self,
        user: UserFeatures,
        items: Sequence[str],
        scores: np.ndarray,
        model: str,
        weights: Mapping[str, float] | None = None,
    ) -> StageResult: ...


class RerankBackend(Protocol):
    async def rerank(
        self,
        user: UserFeatures,
        items: Sequence[str],
        scores: np.ndarray,
        model: str,
        components: Mapping[str, Mapping[str, float]] | None = None,
    ) -> StageResult: ...


class BanditBackend(Protocol):
    async def explore(
        self,
        user: UserFeatures,
        items: Sequence[str],
        scores: np.ndarray,
        k: int,
        policy: str,
        explore_slots: int,
        segment: str = "",
    ) -> StageResult: ...


# --- stages -----------------------------------------------------------------------------------


class FeaturesStage:
    """Reads the user's real-time features in one Redis round trip."""

    name = "features"

    def __init__(self, store: FeatureSource, timeout_s: float = 0.05):
        self.store = store
        self.timeout_s = timeout_s

    def applies(self, state: RecommendState) -> bool:
        return True

    async def __call__(self, state: RecommendState) -> None:
        state.user = await self.store.get_user_features(state.user_id)


class RetrievalStage:
    """Candidate generation; skipped on the cold-start path (unknown user)."""

    name = "retrieval"

    def __init__(self, backend: RetrievalBackend, n: int = 200, timeout_s: float = 0.15):
        self.backend = backend
        self.n = n
        self.timeout_s = timeout_s

    def applies(self, state: RecommendState) -> bool:
        return not state.cold_start

    async def __call__(self, state: RecommendState) -> None:
        result = await self.backend.retrieve(state.features, self.n, sorted(state.never_show))
        state.set_ranking(result.items, result.scores, result.components)
        state.model_versions[self.name] = result.version


class PopularityStage:
    """Popular items when there are no candidates (cold start, or retrieval failed / was empty).

    Reads ``items:popularity`` from Redis under half the stage deadline, else uses the bundle
    catalogue's popularity list loaded at start; excluded and recent items are removed.
    """

    name = "popularity"

    def __init__(
        self,
        store: FeatureSource | None,
        catalog_popularity: Sequence[str],
        n: int = 200,
        timeout_s: float = 0.05,
    ):
        self.store = store
        self.catalog_popularity = list(catalog_popularity)
        self.n = n
        self.timeout_s = timeout_s

    def applies(self, state: RecommendState) -> bool:
        return not state.candidates

    async def __call__(self, state: RecommendState) -> None:
        never = state.never_show
        items: list[str] = []
        kind = "popularity"
        if self.store is not None:
            try:
                async with asyncio.timeout(self.timeout_s / 2):
                    items = await self.store.get_popular(self.n + len(never))
            except Exception as exc:  # Redis down: the bundle's list below
                log.info("popularity from Redis unavailable (%r), using the bundle catalogue", exc)
        if not items:
            items = self.catalog_popularity
            kind = "catalog_popularity"
        if not items:
            raise RuntimeError("no popularity list in Redis nor in the bundle catalogue")
        chosen = [x for x in items if x not in never][: self.n]
        FALLBACKS.labels(kind).inc()
        state.set_ranking(chosen, np.linspace(1.0, 0.0, num=len(chosen), endpoint=False))
        state.model_versions[self.name] = kind


class RankingStage:
    name = "ranking"

    def __init__(self, backend: RankingBackend, timeout_s: float = 0.15):
        self.backend = backend
        self.timeout_s = timeout_s

    def applies(self, state: RecommendState) -> bool:
        return bool(state.candidates) and not state.cold_start

    async def __call__(self, state: RecommendState) -> None:
        weights = dict(state.pipeline.task_weights) or None
        result = await self.backend.rank(
            state.features, state.candidates, state.scores, state.pipeline.ranking_model, weights
        )
        state.set_ranking(result.items, result.scores, result.components)
        state.model_versions[self.name] = result.version


class RerankStage:
    """Sequential re-ranking; only for users with recent items, when the variant enables it."""

    name = "rerank"

    def __init__(self, backend: RerankBackend, timeout_s: float = 0.15):
        self.backend = backend
        self.timeout_s = timeout_s

    def applies(self, state: RecommendState) -> bool:
        return state.pipeline.rerank_enabled and bool(state.candidates) and bool(state.features.recent_items)

    async def __call__(self, state: RecommendState) -> None:
        result = await self.backend.rerank(
            state.features, state.candidates, state.scores, state.pipeline.rerank_model, state.components
        )
        state.set_ranking(result.items, result.scores, result.components)
        state.model_versions[self.name] = result.version


class DiversityStage:
    """MMR or DPP over the ranked list, per the variant's ``diversity`` settings.

    Placement: after ranking/rerank and BEFORE the bandit. The stage picks k items from the top
    ``window`` candidates (relevance = the current scores, similarity = genre Jaccard or cosine of
    the two-tower item embeddings) and puts them first, followed by the other candidates in their
    ranked order. The bandit then keeps the first k - slots of this diversified list and explores
    among the rest, so every propensity it reports is computed on the list it actually drew from
    and stays valid for off-policy estimation; the exploration slots are not re-ordered afterwards.
    Scores are kept (the reply shows relevance); only the order changes.
    """

    name = "diversity"

    def __init__(self, similarity: Any, window: int = 50, timeout_s: float = 0.05):
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.similarity = similarity
        self.window = window
        self.timeout_s = timeout_s

    def applies(self, state: RecommendState) -> bool:
        return state.pipeline.diversity not in ("", "none") and len(state.candidates) > 1

    async def __call__(self, state: RecommendState) -> None:
        from recstack.diversity.catalog import diversify

        pipeline = state.pipeline
        n = min(len(state.candidates), max(self.window, state.k))
        top = state.candidates[:n]
        sim = self.similarity.matrix(top, pipeline.diversity_similarity)
        chosen = diversify(state.scores[:n], sim, state.k, pipeline.diversity, pipeline.diversity_lambda)
        rest = np.setdiff1d(np.arange(len(state.candidates)), chosen, assume_unique=True)
        order = np.concatenate([chosen, rest]).astype(np.int64)
        props = None if state.propensities is None else state.propensities[order]
        state.set_ranking([state.candidates[i] for i in order], state.scores[order], None, props)
        state.model_versions[self.name] = f"{pipeline.diversity}:{pipeline.diversity_similarity}"


class BanditStage:
    """Exploration over the ranked slate; sets the propensities. Skipped when the variant has no
    exploration slots (``explore_slots`` 0: a deterministic slate, propensity 1). The request's
    segment (``RecommendState.bandit_segment``, "" = none) goes to the backend."""

    name = "bandit"

    def __init__(self, backend: BanditBackend, timeout_s: float = 0.1):
        self.backend = backend
        self.timeout_s = timeout_s

    def applies(self, state: RecommendState) -> bool:
        return bool(state.candidates) and state.pipeline.explore_slots > 0

    async def __call__(self, state: RecommendState) -> None:
        result = await self.backend.explore(
            state.features,
            state.candidates,
            state.scores,
            state.k,
            state.pipeline.policy,
            state.pipeline.explore_slots,
            segment=state.bandit_segment,
        )
        state.set_ranking(result.items, result.scores, result.components, result.propensities)
        state.model_versions[self.name] = result.version
        if result.stale:
            state.mark_degraded(self.name, "stale arm statistics (Redis unavailable)")


def build_stages(
    store: FeatureSource | None,
    retrieval: RetrievalBackend,
    ranking: RankingBackend,
    rerank: RerankBackend,
    bandit: BanditBackend,
    catalog_popularity: Sequence[str],
    *,
    n_candidates: int = 200,
    features_timeout_s: float = 0.05,
    retrieval_timeout_s: float = 0.15,
    ranking_timeout_s: float = 0.15,
    rerank_timeout_s: float = 0.15,
    bandit_timeout_s: float = 0.1,
    popularity_timeout_s: float = 0.05,
    similarity: Any = None,
    diversity_window: int = 50,
    diversity_timeout_s: float = 0.05,
) -> list[Any]:
    """The standard stage list, in order (the diversity stage only with a ``similarity``,
    a ``recstack.diversity.catalog.CatalogSimilarity``)."""
    stages: list[Any] = []
    if store is not None:
        stages.append(FeaturesStage(store, features_timeout_s))
    stages += [
        RetrievalStage(retrieval, n_candidates, retrieval_timeout_s),
        PopularityStage(store, catalog_popularity, n_candidates, popularity_timeout_s),
        RankingStage(ranking, ranking_timeout_s),
        RerankStage(rerank, rerank_timeout_s),
    ]
    if similarity is not None:
        stages.append(DiversityStage(similarity, diversity_window, diversity_timeout_s))
    stages.append(BanditStage(bandit, bandit_timeout_s))
    return stages


# --- gRPC backends ----------------------------------------------------------------------------


def _components(items: Sequence[Any]) -> dict[str, dict[str, float]]:
    return {x.item_id: dict(x.scores) for x in items if x.scores}


def _result(items: Sequence[Any], version: str) -> StageResult:
    return StageResult(
        items=[x.item_id for x in items],
        scores=np.asarray([x.score for x in items], dtype=np.float64),
        version=version,
        components=_components(items),
    )


class _GrpcBackend:
    """One stub of ``stub_class`` over ``channel``; every call has the stage's deadline ``timeout_s``."""

    stub_class: Callable[[Any], Any]

    def __init__(self, channel: Any, timeout_s: float):
        self.stub = self.stub_class(channel)
        self.timeout_s = timeout_s


class GrpcRetrieval(_GrpcBackend):
    stub_class = retrieval_pb2_grpc.RetrievalStub

    async def retrieve(self, user: UserFeatures, n: int, exclude: Collection[str]) -> StageResult:
        request = retrieval_pb2.RetrieveRequest(user=user_to_proto(user), n=n, exclude_items=list(exclude))
        reply = await call(self.stub.Retrieve, request, self.timeout_s)
        return _result(reply.items, reply.model_version)


class GrpcRanking(_GrpcBackend):
    stub_class = ranking_pb2_grpc.RankingStub

    async def rank(
        self,
        user: UserFeatures,
        items: Sequence[str],
        scores: np.ndarray,
        model: str,
        weights: Mapping[str, float] | None = None,
    ) -> StageResult:
        request = ranking_pb2.RankRequest(
            user=user_to_proto(user),
            candidates=scored_items(items, scores),
            model=model,
            task_weights=dict(weights or {}),
        )
        reply = await call(self.stub.Rank, request, self.timeout_s)
        return _result(reply.items, reply.model_version)


class GrpcRerank(_GrpcBackend):
    stub_class = rerank_pb2_grpc.RerankStub

    async def rerank(
        self,
        user: UserFeatures,
        items: Sequence[str],
        scores: np.ndarray,
        model: str,
        components: Mapping[str, Mapping[str, float]] | None = None,
    ) -> StageResult:
        """Sends the candidates with the scores of earlier stages (``components``: {item: {name:
        score}}), which the bundle's fusion reads."""
        per_name = components_by_name(items, components or {})
        request = rerank_pb2.RerankRequest(
            user=user_to_proto(user), candidates=scored_items(items, scores, per_name), model=model
        )
        reply = await call(self.stub.Rerank, request, self.timeout_s)
        return _result(reply.items, reply.model_version)


class GrpcBandit(_GrpcBackend):
    stub_class = bandit_pb2_grpc.BanditStub

    async def explore(
        self,
        user: UserFeatures,
        items: Sequence[str],
        scores: np.ndarray,
        k: int,
        policy: str,
        explore_slots: int,
        segment: str = "",
    ) -> StageResult:
        request = bandit_pb2.ExploreRequest(
            user=user_to_proto(user),
            candidates=scored_items(items, scores),
            k=k,
            policy=policy,
            explore_slots=explore_slots,
            segment=segment,
        )
        reply = await call(self.stub.Explore, request, self.timeout_s)
        result = _result(reply.items, reply.policy)
        result.propensities = np.asarray([x.propensity for x in reply.items], dtype=np.float64)
        result.stale = reply.stale_state
        return result


# --- in-process backend (no gRPC) -------------------------------------------------------------


class LocalBandit:
    """Thompson slate policy over an ArmCache, in process. A ``segment`` (a valid segment id, else
    ValueError) draws from the segment arms; the ArmCache then needs a ``segment_reader``."""

    def __init__(self, policy: ThompsonSlatePolicy, arms: ArmCache):
        self.policy = policy
        self.arms = arms

    async def explore(
        self,
        user: UserFeatures,
        items: Sequence[str],
        scores: np.ndarray,
        k: int,
        policy: str,
        explore_slots: int,
        segment: str = "",
    ) -> StageResult:
        if policy not in ("", self.policy.name):
            raise ValueError(f"policy {policy!r} is not available; use 'thompson'")
        if segment and not is_valid_segment(segment):
            raise ValueError(f"segment {segment[:80]!r} is not a valid segment id")
        arms, segment_arms, stale = await self.arms.get_segmented(list(items), segment)
        ids, out, props = self.policy.select(
            items,
            scores,
            k,
            arms,
            explore_slots=explore_slots or None,
            segment=segment,
            segment_arms=segment_arms,
        )
        return StageResult(ids, out, self.policy.name, propensities=props, stale=stale)

"""The gateway's chain stages and their two kinds of backends.

Stages (recstack.serving.chain.Stage): features -> retrieval -> popularity (only when there are
no candidates: cold start or retrieval failed) -> ranking -> rerank (only with recent items and
when the variant enables it) -> diversity (when the variant sets a method) -> bandit (when the
variant has exploration slots). Each stage talks to a backend:

- gRPC backends (``recstack.rpc.backends.Grpc*``): each stage its own service, one stub call with
  the stage's deadline;
- in process (``recstack.serving.inprocess``): the same serving cores in the gateway process, or
  any object with the backend's method (the backend protocols below; tests use small fakes).

Every backend returns a ``StageResult``, so the same chain runs either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from recstack.exploration.arms import ArmCache
from recstack.exploration.explorer import Explorer
from recstack.exploration.thompson import ThompsonSlatePolicy
from recstack.features.types import UserFeatures
from recstack.serving.chain import FALLBACKS, RecommendState

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """items [N] best first, scores [N], optional named scores {name: [N]} and propensities [N]."""

    items: list[str]
    scores: np.ndarray
    version: str = ""
    components: dict[str, np.ndarray] = field(default_factory=dict)
    propensities: np.ndarray | None = None
    stale: bool = False


class FeatureSource(Protocol):
    async def get_user_features(self, user_id: str) -> UserFeatures: ...

    async def get_popular_scores(self, n: int, half_life_s: float) -> list[tuple[str, float]]: ...


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
        components: Mapping[str, np.ndarray] | None = None,
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

    The bundle catalogue's popularity list (training counts) blended with the stream's real-time
    popularity (``items:popularity``, read under half the stage deadline): an item moves ahead of
    the catalogue's order only once its time-decayed stream popularity reaches ``min_support``
    (weighted events: one user rating three tail items does not make them everybody's top 3), and
    then in the order of that popularity. Items the bundle does not know are left out; excluded
    and consumed items are removed. Redis down: the catalogue's order alone.
    """

    name = "popularity"

    def __init__(
        self,
        store: FeatureSource | None,
        catalog_popularity: Sequence[str],
        n: int = 200,
        timeout_s: float = 0.05,
        min_support: float = 5.0,
        half_life_s: float = 86400.0,
    ):
        self.store = store
        self.catalog_popularity = list(catalog_popularity)
        self.n = n
        self.timeout_s = timeout_s
        self.min_support = min_support
        self.half_life_s = half_life_s

    @property
    def catalog_popularity(self) -> list[str]:
        return self._catalog

    @catalog_popularity.setter
    def catalog_popularity(self, items: Sequence[str]) -> None:
        self._catalog = list(items)
        self._known = set(self._catalog)

    def applies(self, state: RecommendState) -> bool:
        return not state.candidates

    async def __call__(self, state: RecommendState) -> None:
        never = state.never_show
        trending: list[str] = []
        if self.store is not None:
            try:
                async with asyncio.timeout(self.timeout_s / 2):
                    pairs = await self.store.get_popular_scores(self.n + len(never), self.half_life_s)
                trending = [i for i, score in pairs if score >= self.min_support and i in self._known]
            except Exception as exc:  # Redis down: the bundle's list below
                log.info("popularity from Redis unavailable (%r), using the bundle catalogue", exc)
        if not self._catalog and not trending:
            raise RuntimeError("no popularity list in Redis nor in the bundle catalogue")
        lead = set(trending)
        items = trending + [x for x in self._catalog if x not in lead]
        chosen = [x for x in items if x not in never][: self.n]
        kind = "popularity" if trending else "catalog_popularity"
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
    popularity_min_support: float = 5.0,
    popularity_half_life_s: float = 86400.0,
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
        PopularityStage(
            store,
            catalog_popularity,
            n_candidates,
            popularity_timeout_s,
            popularity_min_support,
            popularity_half_life_s,
        ),
        RankingStage(ranking, ranking_timeout_s),
        RerankStage(rerank, rerank_timeout_s),
    ]
    if similarity is not None:
        stages.append(DiversityStage(similarity, diversity_window, diversity_timeout_s))
    stages.append(BanditStage(bandit, bandit_timeout_s))
    return stages


# --- in-process backend (no gRPC) -------------------------------------------------------------


class LocalBandit:
    """Thompson slate policy over an ArmCache, in process: ``recstack.exploration.explorer.Explorer``
    with Thompson only, the core the bandit service calls. A ``segment`` (a valid segment id, else
    ValueError) draws from the segment arms; the ArmCache then needs a ``segment_reader``. Errors
    are ``PolicyInputError`` (a ValueError)."""

    def __init__(self, policy: ThompsonSlatePolicy, arms: ArmCache):
        self.explorer = Explorer(policy, arms)
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
        decision, stale = await self.explorer.explore(
            policy, items, scores, k, explore_slots, segment=segment
        )
        return StageResult(
            decision.items, decision.scores, self.policy.name, propensities=decision.propensities, stale=stale
        )

"""gRPC backends of the gateway's chain stages: one stub call per stage with the stage's deadline.

Each converts between the stage's Python values (recstack.serving.stages.StageResult) and the
stage service's protobuf messages; the in-process alternatives are in recstack.serving.inprocess.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np

from recstack.features.types import UserFeatures
from recstack.rpc.client import call
from recstack.rpc.convert import (
    candidates_from_proto,
    candidates_to_proto,
    components_from_proto,
    scored_items,
    user_to_proto,
)
from recstack.serving.stages import StageResult
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


def _result(items: Sequence[Any], version: str) -> StageResult:
    return StageResult(
        items=[x.item_id for x in items],
        scores=np.asarray([x.score for x in items], dtype=np.float64),
        version=version,
        components=components_from_proto(items),
    )


def _columns(candidates: Any, version: str) -> StageResult:
    ids, scores, components = candidates_from_proto(candidates)
    return StageResult(items=ids, scores=scores, version=version, components=components)


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
        return _columns(reply.candidates, reply.model_version)


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
            candidates=candidates_to_proto(items, scores),
            model=model,
            task_weights=dict(weights or {}),
        )
        reply = await call(self.stub.Rank, request, self.timeout_s)
        return _columns(reply.candidates, reply.model_version)


class GrpcRerank(_GrpcBackend):
    stub_class = rerank_pb2_grpc.RerankStub

    async def rerank(
        self,
        user: UserFeatures,
        items: Sequence[str],
        scores: np.ndarray,
        model: str,
        components: Mapping[str, np.ndarray] | None = None,
    ) -> StageResult:
        """Sends the candidates with the scores of earlier stages (``components``: {name: [N]}),
        which the bundle's fusion reads."""
        request = rerank_pb2.RerankRequest(
            user=user_to_proto(user), candidates=candidates_to_proto(items, scores, components), model=model
        )
        reply = await call(self.stub.Rerank, request, self.timeout_s)
        return _columns(reply.candidates, reply.model_version)


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

"""Ranking.Rank -> Ranker.rank."""

from __future__ import annotations

import grpc

from recstack.models import DEFAULT_RANKING_MODEL, RANKING_MODELS
from recstack.rpc.convert import CandidatesError, candidates_from_proto, candidates_to_proto, user_from_proto
from recstack.rpc.servicer import ModelServicer, abort_invalid
from recstack.serving.ranker import ranking_components
from recstack.v1 import ranking_pb2, ranking_pb2_grpc


class RankingServicer(ModelServicer, ranking_pb2_grpc.RankingServicer):
    """core: a ``Ranker`` (``rank(user, candidates, model, weights) -> (ids, scores, per_task)``)."""

    what = "ranking"
    batch_method = "rank_many"

    async def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        await self.loaded_core(context)
        model = request.model or DEFAULT_RANKING_MODEL
        if model not in RANKING_MODELS:
            await abort_invalid(
                context, f"model must be one of {list(RANKING_MODELS)} (or empty), got {model!r}"
            )
        try:
            candidates, _, _ = candidates_from_proto(request.candidates)
        except CandidatesError as exc:
            await abort_invalid(context, str(exc))
        if not candidates:
            return ranking_pb2.RankResponse(model_version=self.version)
        weights = dict(request.task_weights) or None
        user = user_from_proto(request.user)
        (ids, scores, per_task), version = await self.call_batched(
            context, self.batch, (user, candidates, model, weights)
        )
        components = ranking_components(scores, per_task or {})
        return ranking_pb2.RankResponse(
            candidates=candidates_to_proto(ids, scores, components), model_version=version
        )

"""Rerank.Rerank -> Reranker.rerank."""

from __future__ import annotations

import grpc

from recstack.models import RERANK_MODELS
from recstack.rpc.convert import CandidatesError, candidates_from_proto, candidates_to_proto, user_from_proto
from recstack.rpc.servicer import ModelServicer, abort_invalid
from recstack.v1 import rerank_pb2, rerank_pb2_grpc


class RerankServicer(ModelServicer, rerank_pb2_grpc.RerankServicer):
    """core: a ``Reranker`` (``rerank_many([(user, candidates, upstream, model, components)])``)."""

    what = "rerank"
    batch_method = "rerank_many"

    async def Rerank(
        self, request: rerank_pb2.RerankRequest, context: grpc.aio.ServicerContext
    ) -> rerank_pb2.RerankResponse:
        await self.loaded_core(context)
        if request.model and request.model not in RERANK_MODELS:
            await abort_invalid(
                context,
                f"model must be one of {list(RERANK_MODELS)} (or empty: default), got {request.model!r}",
            )
        try:
            candidates, upstream, components = candidates_from_proto(request.candidates)
        except CandidatesError as exc:
            await abort_invalid(context, str(exc))
        if not candidates:
            return rerank_pb2.RerankResponse(model_version=self.version)
        user = user_from_proto(request.user)
        request_args = (user, candidates, upstream, request.model or None, components)
        (ids, scores), version = await self.call_batched(context, self.batch, request_args)
        return rerank_pb2.RerankResponse(candidates=candidates_to_proto(ids, scores), model_version=version)

"""Retrieval.Retrieve -> Retriever.retrieve."""

from __future__ import annotations

import grpc

from recstack.rpc.convert import candidates_to_proto, user_from_proto
from recstack.rpc.servicer import ModelServicer, abort_invalid
from recstack.v1 import retrieval_pb2, retrieval_pb2_grpc

MAX_N = 2000


class RetrievalServicer(ModelServicer, retrieval_pb2_grpc.RetrievalServicer):
    """core: a ``Retriever`` (``retrieve(user, n, exclude) -> (ids, scores, {source: scores})``)."""

    what = "retrieval"
    batch_method = "retrieve_many"

    async def Retrieve(
        self, request: retrieval_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.RetrieveResponse:
        await self.loaded_core(context)
        if not 1 <= request.n <= MAX_N:
            await abort_invalid(context, f"n must be between 1 and {MAX_N}, got {request.n}")
        user = user_from_proto(request.user)
        (ids, scores, components), version = await self.call_batched(
            context, self.batch, (user, request.n, set(request.exclude_items))
        )
        return retrieval_pb2.RetrieveResponse(
            candidates=candidates_to_proto(ids, scores, components), model_version=version
        )

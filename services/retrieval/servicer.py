"""Retrieval.Retrieve -> Retriever.retrieve."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from recstack.rpc.convert import scored_items, user_from_proto
from recstack.rpc.loading import abort_invalid, abort_not_loaded, is_client_error
from recstack.v1 import retrieval_pb2, retrieval_pb2_grpc

log = logging.getLogger(__name__)

MAX_N = 2000


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServicer):
    """core: a ``Retriever`` (``retrieve(user, n, exclude) -> (ids, scores)``); None until loaded."""

    def __init__(self, core: Any = None, version: str = ""):
        self.core = core
        self.version = version

    async def Retrieve(
        self, request: retrieval_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.RetrieveResponse:
        if self.core is None:
            await abort_not_loaded(context, "retrieval")
        if not 1 <= request.n <= MAX_N:
            await abort_invalid(context, f"n must be between 1 and {MAX_N}, got {request.n}")
        user = user_from_proto(request.user)
        try:
            ids, scores = self.core.retrieve(user, request.n, set(request.exclude_items))
        except Exception as exc:
            if is_client_error(exc):
                await abort_invalid(context, str(exc))
            log.exception("Retrieve failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"retrieval failed: {type(exc).__name__}")
        return retrieval_pb2.RetrieveResponse(items=scored_items(ids, scores), model_version=self.version)

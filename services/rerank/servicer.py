"""Rerank.Rerank -> Reranker.rerank."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import numpy as np

from recstack.rpc.convert import scored_items, user_from_proto
from recstack.rpc.loading import abort_invalid, abort_not_loaded, is_client_error
from recstack.v1 import rerank_pb2, rerank_pb2_grpc

log = logging.getLogger(__name__)

RERANK_MODELS = ("sasrec", "gru4rec", "bert4rec")


class RerankServicer(rerank_pb2_grpc.RerankServicer):
    """core: a ``Reranker`` (``rerank(user, candidates, upstream, model) -> (ids, scores)``)."""

    def __init__(self, core: Any = None, version: str = ""):
        self.core = core
        self.version = version

    async def Rerank(
        self, request: rerank_pb2.RerankRequest, context: grpc.aio.ServicerContext
    ) -> rerank_pb2.RerankResponse:
        if self.core is None:
            await abort_not_loaded(context, "rerank")
        if request.model and request.model not in RERANK_MODELS:
            await abort_invalid(
                context,
                f"model must be one of {list(RERANK_MODELS)} (or empty: default), got {request.model!r}",
            )
        if not request.candidates:
            return rerank_pb2.RerankResponse(model_version=self.version)
        candidates = [c.item_id for c in request.candidates]
        upstream = np.asarray([c.score for c in request.candidates], dtype=np.float32)
        user = user_from_proto(request.user)
        try:
            ids, scores = self.core.rerank(user, candidates, upstream, request.model or None)
        except Exception as exc:
            if is_client_error(exc):
                await abort_invalid(context, str(exc))
            log.exception("Rerank failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"rerank failed: {type(exc).__name__}")
        return rerank_pb2.RerankResponse(items=scored_items(ids, scores), model_version=self.version)
